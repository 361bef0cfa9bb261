"""Item 3: the cost of sequence parallelism. One SE(3)-Hyena block, forward + backward, at sp = 1, 2, 4 with
both strategies (``channels``, ``fft``):

- weak scaling: fixed tokens per rank T, N = sp * T (ideal: time and memory per rank stay flat);
- strong scaling: fixed N (ideal: time and memory per rank fall as 1/sp);
- traffic: all-to-all bytes per token per layer, measured by the communication ledger, against the closed form
  (``dist_hyena.parallel.volume``), both strategies, circular and causal. The run fails if they differ by a byte.

    python benchmarks/sp_block.py            # writes results/sp_block.{json,png}
    python benchmarks/sp_block.py --quick    # smoke run (tiny N, sp 1 and 2, results in a temp dir)
    python benchmarks/sp_block.py --mlp-token-chunk 4096 --weak 16384 --strong 65536 --no-traffic   # MLPs chunked

Settings in ``configs/benchmarks/sp_block.yaml``. Every (N, sp, strategy, mode) runs in fresh processes (gloo
ranks on CPU, NCCL when there are GPUs), so each peak is that run's own. Memory per rank is the peak resident
set size of the rank process (``getrusage`` ru_maxrss) minus its RSS once the block and its inputs are built
(activations, communication buffers, FFT workspace); on GPUs ``torch.cuda.max_memory_allocated``. Time: wall
time of the step (the slowest rank) and the CPU seconds of each rank (steadier on a shared machine). When the
ranks' threads outnumber the machine's cores (sp = 4 on 2 cores) the run is marked ``oversubscribed``: its
memory per rank is exact, its wall time is not the time of sp dedicated devices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import grouped, markdown_table  # noqa: E402
from dist_hyena.runtime import free_port  # noqa: E402

CONFIG = harness.ROOT / "configs" / "benchmarks" / "sp_block.yaml"
QUICK = {"sp": [1, 2], "weak_tokens_per_rank": [512], "strong_tokens": [1024], "warmup": 0, "repeats": 1,
         "traffic": {"tokens": 256, "conv_modes": []}}


def _rank(rank: int, world: int, port: int, job: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from dist_hyena import HyenaConfig
    from dist_hyena.model import HyenaBlock
    from dist_hyena.parallel import init_mesh, ledger, shard_sequence

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    # One core per rank, like one accelerator per rank: sp = 2 then uses twice the compute of sp = 1.
    harness.set_threads(job["threads_per_rank"])
    mesh = None
    if job["sp"] > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
        mesh = init_mesh(sp=world)
    dtype = getattr(torch, job["dtype"])
    cfg = HyenaConfig(conv_mode=job["conv_mode"], sp_strategy=job["strategy"] or "auto", **job["model"])
    torch.manual_seed(0)
    block = HyenaBlock(cfg, mesh).to(device, dtype)
    if mesh is not None:
        ledger.name_layers(block)
    gen = torch.Generator().manual_seed(1)
    n = job["n_tokens"]
    x = torch.randn(1, n, cfg.vector_width, 3, generator=gen, dtype=dtype)
    f = torch.randn(1, n, cfg.scalar_width, generator=gen, dtype=dtype)
    if mesh is not None:
        x, f = shard_sequence(x, mesh), shard_sequence(f, mesh)
    x, f = x.contiguous().to(device), f.contiguous().to(device)
    del gen
    harness.cap_memory(int(job["memory_limit_gib_per_rank"] * harness.GIB))
    rss_built = harness.rss_bytes()

    def step():
        block.zero_grad(set_to_none=True)
        out_x, out_f = block(x, f)
        (out_x.sum() + out_f.sum()).backward()
        if cuda:
            torch.cuda.synchronize()

    for _ in range(job["warmup"]):
        step()
    times, cpu_times = [], []
    for _ in range(job["repeats"]):
        if mesh is not None:
            dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        with ledger.recording() as log:
            step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    result = {
        "time_s": statistics.median(times),
        "cpu_time_s": statistics.median(cpu_times),
        "peak_rss_bytes": harness.peak_rss_bytes(),
        "rss_after_build_bytes": rss_built,
        "ledger": {f"{layer}|{op}": b for (layer, op), b in log.totals().items()},
    }
    if cuda:
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    if mesh is not None:
        dist.barrier()
        dist.destroy_process_group()


def run_job(job: dict) -> dict:
    """Run one (N, sp, strategy, mode) in fresh processes; summarise over ranks."""
    import torch.multiprocessing as mp

    key = {k: job[k] for k in ("n_tokens", "sp", "strategy", "conv_mode")}
    load_before = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_rank, args=(job["sp"], free_port(), job, tmp), nprocs=job["sp"], join=True)
            ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(job["sp"])]
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        # Reported, not hidden: e.g. a run past memory_limit_gib_per_rank.
        return {**key, "fits": False, "error": str(e).strip().splitlines()[-1]}
    growth = [r["peak_rss_bytes"] - r["rss_after_build_bytes"] for r in ranks]
    summary = {
        **key, "fits": True, "tokens_per_rank": job["n_tokens"] / job["sp"],
        "oversubscribed": job["sp"] * job["threads_per_rank"] > (os.cpu_count() or 1),
        "time_s": max(r["time_s"] for r in ranks),  # the step ends when the slowest rank does
        # CPU seconds each rank spent (all its threads): the work per rank, whatever else shares the machine.
        "cpu_time_s_per_rank": [round(r["cpu_time_s"], 3) for r in ranks],
        "peak_rss_mib_per_rank": [round(r["peak_rss_bytes"] / 2**20, 1) for r in ranks],
        "memory_mib_per_rank": [round(g / 2**20, 1) for g in growth],
        "memory_mib_max_rank": round(max(growth) / 2**20, 1),
        # Timings on a shared machine are only as good as its load: keep it beside them.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if "peak_cuda_bytes" in ranks[0]:
        summary["peak_cuda_mib_per_rank"] = [round(r["peak_cuda_bytes"] / 2**20, 1) for r in ranks]
    if job["sp"] > 1:
        summary.update(_traffic(job, ranks))
    return summary


def _traffic(job: dict, ranks: list[dict]) -> dict:
    """Ledger (summed over ranks) vs closed-form volume: must agree to the byte."""
    import torch

    from dist_hyena.parallel.volume import bytes_per_token, conv_bytes

    measured: dict[str, int] = {}
    for r in ranks:
        for key, nbytes in r["ledger"].items():
            op = key.split("|", 1)[1]
            measured[op] = measured.get(op, 0) + nbytes
    m = job["model"]
    dtype = getattr(torch, job["dtype"])
    wire = dtype if job["strategy"] == "channels" else torch.promote_types(dtype, torch.float32)
    itemsize = torch.finfo(wire).bits // 8
    forward = conv_bytes(job["strategy"], job["conv_mode"], job["n_tokens"], job["sp"], m["vector_width"],
                         m["scalar_width"], itemsize)
    theory = dict(forward)
    theory.update({f"{op}.backward": b for op, b in forward.items() if op != "token_counts"})
    if measured != theory:
        raise AssertionError(f"ledger {measured} != theory {theory} for {job}")
    moved = sum(b for op, b in measured.items() if not op.startswith("token_counts"))
    n = job["n_tokens"]
    return {
        "bytes_per_token_per_layer": moved / n,
        "theory_bytes_per_token_per_layer": bytes_per_token(job["strategy"], job["conv_mode"], job["sp"],
                                                            m["vector_width"], m["scalar_width"], itemsize),
        "ledger_equals_theory": True,
        "bytes_by_op": measured,
    }


def plan(cfg: dict) -> list[tuple[str, dict]]:
    """(sweep, job) for every point of the weak, strong and traffic sweeps; shared points appear once per sweep."""
    common = {k: cfg[k] for k in ("dtype", "warmup", "repeats", "threads_per_rank", "memory_limit_gib_per_rank",
                                  "model")}
    n_groups = cfg["model"]["vector_width"] + cfg["model"]["scalar_width"]

    def strategies(sp):
        return [None] if sp == 1 else [s for s in cfg["strategies"] if s != "channels" or n_groups >= sp]

    points = []
    for t in cfg["weak_tokens_per_rank"]:
        points += [("weak", dict(n_tokens=t * sp, sp=sp, strategy=s, conv_mode=cfg["conv_mode"]))
                   for sp in cfg["sp"] for s in strategies(sp)]
    for n in cfg["strong_tokens"]:
        points += [("strong", dict(n_tokens=n, sp=sp, strategy=s, conv_mode=cfg["conv_mode"]))
                   for sp in cfg["sp"] for s in strategies(sp)]
    for mode in cfg["traffic"]["conv_modes"]:
        n = cfg["traffic"]["tokens"]
        points += [("traffic", dict(n_tokens=n, sp=sp, strategy=s, conv_mode=mode))
                   for sp in cfg["sp"] if sp > 1 for s in strategies(sp)]
    return [(sweep, {**common, **p}) for sweep, p in points]


def run(cfg: dict) -> list[dict]:
    done: dict[tuple, dict] = {}
    runs = []
    for sweep, job in plan(cfg):
        key = (job["n_tokens"], job["sp"], job["strategy"], job["conv_mode"])
        if key not in done:
            done[key] = run_job(job)
            print(json.dumps(done[key]), file=sys.stderr, flush=True)
        runs.append({"sweep": sweep, **done[key]})
    return runs


def summarise(runs: list[dict]) -> dict:
    """Per sweep and strategy: time and memory per rank relative to the one-process run of the sweep."""
    out = {}
    for sweep in ("weak", "strong"):
        pts = [r for r in runs if r["sweep"] == sweep and r["fits"]]
        for size in sorted({r["n_tokens"] if sweep == "strong" else r["tokens_per_rank"] for r in pts}):
            group = [r for r in pts if (r["n_tokens"] if sweep == "strong" else r["tokens_per_rank"]) == size]
            base = next((r for r in group if r["sp"] == 1), None)
            if base is None:
                continue
            rows = []
            for r in group:
                if r["sp"] == 1:
                    continue
                rows.append({"sp": r["sp"], "strategy": r["strategy"], "oversubscribed": r["oversubscribed"],
                             "time_vs_sp1": r["time_s"] / base["time_s"],
                             "cpu_per_rank_vs_sp1": max(r["cpu_time_s_per_rank"]) / base["cpu_time_s_per_rank"][0],
                             "memory_per_rank_vs_sp1": r["memory_mib_max_rank"] / base["memory_mib_max_rank"]})
            out[f"{sweep}_{int(size)}"] = rows
    return out


_COLUMNS = ["N", "sp", "tokens / rank", "strategy", "CPU s / rank (max)", "wall s (step)", "memory MiB / rank (max)"]


def _cells(r: dict) -> list:
    return [grouped(r["n_tokens"]), r["sp"], grouped(r["tokens_per_rank"]), r["strategy"] or "one process",
            f"{max(r['cpu_time_s_per_rank']):.2f}", f"{r['time_s']:.1f}" + " (oversubscribed)" * r["oversubscribed"],
            f"{r['memory_mib_max_rank']:.0f}"]


def _bytes(r: dict) -> str:
    return f"{r['bytes_per_token_per_layer']:.0f} ({r['theory_bytes_per_token_per_layer']:.0f})"


def sweep_table(payload: dict, sweep: str) -> str:
    """One sweep's points, with the all-to-all bytes per token and layer (ledger and theory)."""
    return markdown_table(_COLUMNS + ["bytes / token / layer: measured (theory)"],
                          [_cells(r) + [_bytes(r) if r["sp"] > 1 else "—"]
                           for r in payload["runs"] if r["sweep"] == sweep and r["fits"]])


def sweeps_table(payload: dict) -> str:
    """The weak and strong sweeps' points in one table, without the bytes."""
    return markdown_table(["sweep"] + _COLUMNS, [[r["sweep"], *_cells(r)] for r in payload["runs"]
                                                 if r["sweep"] in ("weak", "strong") and r["fits"]])


def traffic_table(payload: dict) -> str:
    """The traffic sweep: bytes per token and layer for each mode and strategy, and against ``channels``."""
    at = {(r["conv_mode"], r["strategy"], r["sp"]): r for r in payload["runs"] if r["sweep"] == "traffic"}

    def volume(mode: str, strategy: str) -> float:
        return at[mode, strategy, 2]["bytes_per_token_per_layer"]

    rows = [[mode, f"`{strategy}`", *(_bytes(at[mode, strategy, sp]) for sp in (2, 4)),
             f"{volume(mode, strategy) / volume(mode, 'channels'):g}×"]
            for mode, strategy in dict.fromkeys(key[:2] for key in at)]
    return markdown_table(["mode", "strategy", "sp = 2: measured (theory)", "sp = 4: measured (theory)",
                           "vs `channels`"], rows)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in payload["runs"] if r["fits"]]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    styles = {"channels": ("tab:blue", "o"), "fft": ("tab:orange", "s")}
    for row, sweep in enumerate(("weak", "strong")):
        pts = [r for r in runs if r["sweep"] == sweep]
        sizes = sorted({r["tokens_per_rank"] if sweep == "weak" else r["n_tokens"] for r in pts})
        for size, dash in zip(sizes, ("-", "--", "-.", ":"), strict=False):
            group = [r for r in pts if (r["tokens_per_rank"] if sweep == "weak" else r["n_tokens"]) == size]
            base = [r for r in group if r["sp"] == 1]
            label_size = f"T={int(size)}/rank" if sweep == "weak" else f"N={int(size)}"
            for strategy, (color, style) in styles.items():
                line = sorted(base + [r for r in group if r["strategy"] == strategy], key=lambda r: r["sp"])
                if len(line) < 2:
                    continue
                sps = [r["sp"] for r in line]
                for col, (key, fn) in enumerate((("wall", lambda r: r["time_s"]),
                                                 ("memory", lambda r: r["memory_mib_max_rank"]))):
                    ax = axes[row, col]
                    ax.plot(sps, [fn(r) for r in line], style[0] + dash, color=color, label=f"{strategy}, {label_size}")
                    if key == "wall":
                        ax.plot(sps, [max(r["cpu_time_s_per_rank"]) for r in line], style[0] + dash, color=color,
                                alpha=0.35, label=f"{strategy}, {label_size}: CPU s / rank")
                    for r in line:
                        if r["oversubscribed"]:
                            ax.plot([r["sp"]], [fn(r)], "x", color="red", ms=10)
        axes[row, 0].set(ylabel="seconds (fwd + bwd)",
                         title=f"{sweep} scaling: wall time, faint: CPU s / rank (x = oversubscribed)")
        axes[row, 1].set(ylabel="MiB per rank (peak growth)", title=f"{sweep} scaling: memory per rank")
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set(xlabel="sp", xticks=payload["config"]["sp"], xticklabels=[str(s) for s in payload["config"]["sp"]])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
    chunk = payload["config"]["model"].get("mlp_token_chunk")
    fig.suptitle("One SE(3)-Hyena block, forward + backward, per rank vs sp"
                 + (f" (MLPs in chunks of {chunk} tokens)" if chunk else ""), fontsize=10)
    harness.save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny N, sp 1 and 2, results to a temp dir")
    ap.add_argument("--weak", type=int, nargs="+", help="tokens per rank of the weak sweep (overrides the config)")
    ap.add_argument("--strong", type=int, nargs="+", help="N of the strong sweep (overrides the config)")
    ap.add_argument("--sp", type=int, nargs="+", help="sp values (overrides the config)")
    ap.add_argument("--mlp-token-chunk", type=int, default=None,
                    help="HyenaConfig.mlp_token_chunk of the block; results then go to sp_block_chunk<N>.{json,png}")
    ap.add_argument("--no-traffic", action="store_true", help="skip the traffic sweep (bytes do not depend on chunks)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
    name = "sp_block"
    if args.mlp_token_chunk:
        cfg["model"] = {**cfg["model"], "mlp_token_chunk": args.mlp_token_chunk}
        name = f"sp_block_chunk{args.mlp_token_chunk}"
    if args.quick:
        cfg.update(QUICK)
    if args.no_traffic:
        cfg["traffic"] = {**cfg["traffic"], "conv_modes": []}
    for key, value in (("weak_tokens_per_rank", args.weak), ("strong_tokens", args.strong), ("sp", args.sp)):
        if value:
            cfg[key] = value
    args.out = harness.results_dir(args)
    harness.set_threads(cfg["threads_per_rank"])
    machine = harness.machine()
    runs = run(cfg)
    payload = {"benchmark": "sp_block", "machine": machine, "config": cfg,
               "memory": "per rank: peak RSS (ru_maxrss) minus RSS once the block and its inputs are built",
               "runs": runs, "summary": summarise(runs)}
    harness.save(name, payload, args.out, required=("summary",))
    plot(payload, args.out / f"{name}.png")


if __name__ == "__main__":
    main()
