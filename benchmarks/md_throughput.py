"""Real trajectories: how fast `datasets/md.py` preprocesses, and whether the loader keeps up with training.

    python benchmarks/md_throughput.py          # solvated adenylate kinase, 47,681 atoms -> results/md_throughput.json
    python benchmarks/md_throughput.py --quick  # smoke run (the 3,341-atom protein, results in a temp dir)

Preprocessing: `datasets/md.py` on the GROMACS TPR + TRR of MDAnalysisTests (the trajectory given ``--repeat``
times, read as one: 10 frames each), in one process and under `mpiexec -n 2`; wall time of the whole command
(interpreter start, opening the files, writing, finalising) and frames/s, atoms/s of the frames read (two per
sample). Both runs write the same bytes (checked).

    python benchmarks/md_throughput.py --collect runs/md_adk runs/md_adk_solvated   # training runs -> md_training.json

Loader vs step, at sp = 2 (rank 0's token block of every sample): tokens/s the StreamingLoader delivers from the
store made above, and tokens/s one training step (forward, MSE, backward, Adam) of `md_adk_solvated.yaml`'s
model consumes on that block in one process: a rank's pointwise work without the all-to-alls, so the ratio
delivery / consumption is a lower bound.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.loader_throughput import time_loader, train_step  # noqa: E402

CONFIG = harness.ROOT / "dist_hyena" / "configs" / "md_adk_solvated.yaml"


def preprocess(out: Path, topology: str, trajectories: list[str], ranks: int) -> dict:
    cmd = [sys.executable, str(harness.ROOT / "datasets" / "md.py"), "--out", str(out), "--topology", topology,
           "--trajectory", *trajectories, "--no-progress", "--val-frames", "0", "--test-frames", "0", "--gap", "0"]
    if ranks > 1:
        cmd = ["mpiexec", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(harness.ROOT))
    for key in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PMI_"))]:  # a clean MPI job of its own
        del env[key]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    import zarr

    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    samples = sum(attrs["splits"].values())
    return {"ranks": ranks, "seconds": seconds, "samples": samples, "atoms": attrs["n_tokens"],
            "frames_per_s": 2 * samples / seconds, "atoms_per_s": 2 * samples * attrs["n_tokens"] / seconds}


def step_rate(store: Path, sp: int, repeats: int) -> dict:
    import dataclasses

    import torch

    from dist_hyena import SE3HyenaModel
    from dist_hyena.data import StreamingLoader
    from dist_hyena.train.config import load_config

    batch = next(iter(StreamingLoader(store, "train", 1, sp_rank=0, sp_size=sp)))
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = SE3HyenaModel(dataclasses.replace(cfg.model, vector_in=batch["x"].shape[2], scalar_in=batch["f"].shape[2]))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    times = harness.timed(lambda: train_step(model, opt, batch), min_repeats=repeats, max_repeats=repeats)
    n = batch["x"].shape[1]
    return {"tokens": n, "step_s": harness.median(times), "tokens_per_s": n / harness.median(times)}


def collect(run_dirs: list[Path], out: Path) -> Path:
    """launch/train.py runs of the MD configs -> ``md_training.json``: per run its config's model and budget and
    the metrics at best validation (model and references); the runs' metrics.jsonl and loss_curve.png are copied
    beside it (``<out>/<run name>/``). Runs already in the file are kept unless a run of the same name replaces
    them."""
    import json
    import shutil

    from benchmarks.envelope import read

    existing = out / "md_training.json"
    runs = read(existing)["runs"] if existing.exists() else []
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        runs = [r for r in runs if r["run"] != run_dir.name]
        runs.append({"run": run_dir.name, "data": config["data"]["path"], "sp": config["parallel"]["sp"],
                     "steps": summary["steps"], "batch_size": config["train"]["batch_size"],
                     "zero_update": config["model"].get("zero_update", False),
                     "local_window": config["model"].get("local_window", 0),
                     "local_cutoff": config["model"].get("local_cutoff"),
                     "positions_in_stream": config["model"].get("positions_in_stream", True), "best": summary["best"]})
        (out / run_dir.name).mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "loss_curve.png"):
            shutil.copy(run_dir / name, out / run_dir.name / name)
    return harness.save("md_training", {"benchmark": "md_training", "runs": runs}, out)


def _vs(model: float, reference: float) -> str:
    return f"{model:.4g} ({100 * (model - reference) / reference:+.2f}%)"


def training_table(payload: dict) -> str:
    """The MD runs: next-frame MSE at best validation beside the references (README, benchmarks/tables.py)."""
    from benchmarks.tables import markdown_table

    rows = []
    for r in payload["runs"]:
        b = r["best"]
        rows.append([r["run"], r["sp"], f"{r['steps']} × {r['batch_size']}", "yes" if r["zero_update"] else "no",
                     r.get("local_window", 0), "—" if r.get("local_cutoff") is None else f"{r['local_cutoff']:g} Å",
                     "yes" if r.get("positions_in_stream", True) else "no",
                     _vs(b["val_mse"], b["val_static_mse"]), f"{b['val_static_mse']:.4g}",
                     _vs(b["test_mse"], b["test_static_mse"]), f"{b['test_static_mse']:.4g}",
                     f"{b['test_constant_velocity_mse']:.3g}" if "test_constant_velocity_mse" in b else "—"])
    return markdown_table(["run", "sp", "steps × batch", "zero_update", "local_window", "local_cutoff",
                           "positions in stream", "model: val (vs static)",
                           "static: val",
                           "model: test (vs static)", "static: test", "x_t + Δt v_t: test"], rows)


def throughput_table(payload: dict) -> str:
    from benchmarks.tables import markdown_table

    return markdown_table(["MPI ranks", "samples (frames read)", "wall s (whole command)", "frames/s", "atoms/s"],
                          [[r["ranks"], f"{r['samples']} ({2 * r['samples']})", f"{r['seconds']:.1f}",
                            f"{r['frames_per_s']:.1f}", f"{r['atoms_per_s']:.3g}"]
                           for r in payload["runs"] if r["section"] == "preprocess"])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=4, help="times the 10-frame trajectory is read (default 4)")
    ap.add_argument("--quick", action="store_true", help="the 3,341-atom protein, one repeat, results in a temp dir")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    ap.add_argument("--collect", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                    help="only collect these launch/train.py run folders into md_training.json")
    args = ap.parse_args()
    if args.collect:
        print(collect(args.collect, args.out or harness.RESULTS))
        return
    harness.set_threads(1)
    import MDAnalysisTests.datafiles as files

    topology, trajectory = (files.PSF, files.DCD) if args.quick else (files.TPR, files.TRR)
    trajectories = [trajectory] * (1 if args.quick else args.repeat)
    work = Path(tempfile.mkdtemp(prefix="md_throughput_"))
    runs = [preprocess(work / f"ranks{r}", topology, trajectories, r) for r in (1, 2)]
    same = _files(work / "ranks1") == _files(work / "ranks2")
    for r in runs:
        print(f"[md] preprocess {r['atoms']} atoms, {r['samples']} samples, {r['ranks']} rank(s): "
              f"{r['seconds']:.1f} s, {r['frames_per_s']:.1f} frames/s, {r['atoms_per_s']:.3g} atoms/s", flush=True)
    sp = 2
    loader = time_loader(work / "ranks1", 1, sp_rank=0, sp_size=sp)
    step = step_rate(work / "ranks1", sp, repeats=1 if args.quick else 3)
    ratio = loader["tokens_per_s"] / step["tokens_per_s"]
    print(f"[md] sp={sp} rank 0: loader {loader['tokens_per_s']:.3g} tokens/s, step "
          f"{step['tokens_per_s']:.3g} tokens/s ({step['step_s']:.2f} s on {step['tokens']} tokens): ratio "
          f"{ratio:.0f}", flush=True)
    payload = {"benchmark": "md_throughput", "machine": harness.machine(),
               "config": {"topology": Path(topology).name, "trajectory": Path(trajectory).name,
                          "repeat": len(trajectories), "sp": sp, "model_config": CONFIG.name},
               "runs": [{"section": "preprocess", **r} for r in runs], "mpi_equals_serial": same,
               "loader": loader, "step": step, "loader_over_step": ratio}
    out = args.out or (work if args.quick else harness.RESULTS)
    print(harness.save("md_throughput", payload, out,
                       required=("mpi_equals_serial", "loader", "step", "loader_over_step")))
    if not same:
        raise SystemExit("the 2-rank store differs from the 1-rank store")


if __name__ == "__main__":
    main()
