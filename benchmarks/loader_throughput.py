"""Item 5: the loader must never be the bottleneck. Tokens/s the StreamingLoader delivers to one rank vs tokens/s
one rank's training step consumes, at the long-context config, in one run (so both see the same machine).

    python benchmarks/loader_throughput.py           # recall_1m: N = 2^20, sp = 8 -> results/loader_throughput.json
    python benchmarks/loader_throughput.py --quick   # smoke run (N = 4096, sp = 2, results in a temp dir)

Delivery (per rank, SP rank 0 of sp, batch size of the config): the loader over a recall zarr store made here
(chunked along tokens at the SP block, so a rank reads only its chunks) with its background thread, the same with
DataLoader workers, and over the config's own source, ``GeneratedRecall`` (every rank makes the whole sequence
from the seed and keeps its block). Also, whole-store references: reading every chunk file's bytes, zarr-decoding
every array in order, and the loader as one process (sp = 1).

Consumption (per rank): one full training step (forward, MSE loss, backward, Adam) of the config's model (widths,
blocks, activation checkpointing) in one process on ``--step-tokens`` tokens, batch 1. This is a rank's pointwise
work without the all-to-alls of sp > 1 and at fewer tokens than its block, so it overstates the rate a rank
consumes at long context: the ratio delivery / consumption it gives is a lower bound. The fastest measured step
rate is used for the ratio; with ``--models`` also the n-body 1M model's step.

Pipelined (the real thing, small): ``--pipeline-steps`` training steps of that model fed by the loader (background
thread) from a store whose SP block is exactly the step's tokens; records how long each step waited for its batch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import grouped, markdown_table  # noqa: E402

CONFIGS = harness.ROOT / "dist_hyena" / "configs"


def make_store(path: Path, n_tokens: int, samples: int, sp: int, samples_per_chunk: int = 1) -> tuple[Path, float]:
    from dist_hyena.data import generate_store

    start = time.perf_counter()
    store = generate_store("recall", path, seed=0, n_tokens=n_tokens, train=samples, val=0, test=0,
                           samples_per_chunk=samples_per_chunk, tokens_per_chunk=max(1, n_tokens // sp))
    return store, time.perf_counter() - start


def time_loader(source, batch_size: int, max_batches: int | None = None, **kw) -> dict:
    """Tokens/s (and decoded MB/s) one loader delivers, over an epoch or its first ``max_batches``."""
    from dist_hyena.data import StreamingLoader

    loader = StreamingLoader(source, "train", batch_size, **kw)
    tokens = nbytes = batches = 0
    start = time.perf_counter()
    for batch in loader:
        tokens += batch["x"].shape[0] * batch["x"].shape[1]
        nbytes += sum(t.numel() * t.element_size() for k, t in batch.items() if k != "index")
        batches += 1
        if max_batches and batches >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {"batches": batches, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "MB_per_s": nbytes / seconds / 1e6, "bytes_per_token": nbytes / tokens,
            **{k: v for k, v in kw.items() if k in ("num_workers", "sp_rank", "sp_size")}}


def time_raw_files(store: Path) -> dict:
    files = sorted(p for p in (store / "train").rglob("c/**/*") if p.is_file())
    start = time.perf_counter()
    nbytes = sum(len(p.read_bytes()) for p in files)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "MB_per_s": nbytes / seconds / 1e6, "files": len(files), "bytes_on_disk": nbytes}


def time_zarr_decode(store: Path) -> dict:
    import numpy as np
    import zarr

    root = zarr.open_group(store, mode="r")
    attrs = root.attrs.asdict()
    start = time.perf_counter()
    nbytes = sum(np.asarray(root["train"][name][:]).nbytes for name in attrs["arrays"])
    seconds = time.perf_counter() - start
    tokens = attrs["splits"]["train"] * attrs["n_tokens"]
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "MB_per_s": nbytes / seconds / 1e6}


def build_model(config: Path, vector_in: int, scalar_in: int):
    import dataclasses

    import torch

    from dist_hyena import SE3HyenaModel
    from dist_hyena.train.config import load_config

    cfg = load_config(config)
    torch.manual_seed(0)
    model = SE3HyenaModel(dataclasses.replace(cfg.model, vector_in=vector_in, scalar_in=scalar_in))
    return cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def train_step(model, opt, batch: dict) -> None:
    opt.zero_grad(set_to_none=True)
    loss = (model(batch["x"], batch["f"])[0] - batch["y"]).square().mean()
    loss.backward()
    opt.step()


def time_step(config: Path, n: int, repeats: int) -> dict:
    """One rank's training step on ``n`` tokens (batch 1, random data of the config's task shapes)."""
    import torch

    head = load_head(config)
    vector_in, scalar_in, y_tokens = (1, 16, 1) if head == "recall" else (2, 1, n)
    cfg, model, opt = build_model(config, vector_in, scalar_in)
    batch = {"x": torch.randn(1, n, vector_in, 3), "f": torch.randn(1, n, scalar_in),
             "y": torch.randn(1, y_tokens, 1, 3)}
    times = harness.timed(lambda: train_step(model, opt, batch), min_repeats=repeats, max_repeats=repeats)
    step_s = harness.median(times)
    return {"config": config.name, "head": head, "tokens": n, "step_s": step_s, "tokens_per_s": n / step_s,
            "blocks": cfg.model.n_blocks, "widths": {k: getattr(cfg.model, k) for k in
                                                     ("vector_width", "scalar_width", "hidden_width", "gate_width")},
            "activation_checkpointing": cfg.model.activation_checkpointing}


def load_head(config: Path) -> str:
    from dist_hyena.train.config import load_config

    return load_config(config).model.head


def pipelined(config: Path, store: Path, sp: int, steps: int) -> dict:
    """Train ``steps`` steps fed by the loader (SP rank 0 of ``sp``, background thread): time waiting for batches."""
    from dist_hyena.data import StreamingLoader

    loader = StreamingLoader(store, "train", 1, sp_rank=0, sp_size=sp)
    cfg, model, opt = build_model(config, loader.meta["vector_in"], loader.meta["scalar_in"])
    waits, step_times = [], []
    batches = iter(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        train_step(model, opt, batch)
        waits.append(t1 - t0)
        step_times.append(time.perf_counter() - t1)
    batches.close()
    # The first wait includes the loader's start-up (first read before any prefetch): reported apart.
    steady = waits[1:] or waits
    return {"steps": steps, "tokens_per_step": batch["x"].shape[1], "first_wait_s": waits[0],
            "wait_s_after_first": steady, "step_s": step_times,
            "wait_fraction_after_first": sum(steady) / (sum(steady) + sum(step_times[1:] or step_times))}


def delivery_table(payload: dict) -> str:
    """What the loader hands one rank, and how many times what each measured step consumes that is."""
    lc, steps = payload["long_context"], payload["step_consumption_per_rank"]
    labels = {"store_thread": "store (zarr, chunked at the SP block), background thread (the trainer's default)",
              "store_workers": "store, {num_workers} DataLoader worker processes",
              "generated_thread": f"`GeneratedRecall` ({Path(lc['config']).stem}'s own source: every rank makes the "
                                  "whole sequence), thread"}
    rows = [[labels[key].format(**d), f"{d['tokens_per_s'] / 1e6:.2f} M", f"{d['MB_per_s']:.0f}",
             *(f"{grouped(d['tokens_per_s'] / s['tokens_per_s'])}×" for s in steps)]
            for key, d in payload["delivery_per_rank"].items()]
    any_rank = next(iter(payload["delivery_per_rank"].values()))
    return markdown_table([f"loader (SP rank {any_rank['sp_rank']} of {lc['sp']}, batch {lc['batch_size']} × "
                           f"{grouped(lc['tokens_per_rank'])} tokens)", "tokens/s per rank", "MB/s",
                           *(f"vs `{Path(s['config']).stem}` step" for s in steps)], rows)


def steps_table(payload: dict) -> str:
    """The measured training steps: each config's model, its step time and tokens per second."""
    keys = ("vector_width", "scalar_width", "hidden_width", "gate_width")
    rows = [[f"{s['head']} (`{s['config']}`)", f"{s['blocks']}, ({', '.join(str(s['widths'][k]) for k in keys)})"
             + ", checkpointing" * s["activation_checkpointing"], s["tokens"], f"{s['step_s']:.2f}",
             f"{s['tokens_per_s']:.0f}"] for s in payload["step_consumption_per_rank"]]
    return markdown_table(["model (config)", "blocks, widths (Cv, D, hidden, gate)", "tokens", "step (s)",
                           "tokens/s per rank"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 4096, sp = 2, results to a temp dir")
    ap.add_argument("--config", type=Path, default=CONFIGS / "recall_1m.yaml", help="the long-context run config")
    ap.add_argument("--models", type=Path, nargs="*", default=[CONFIGS / "nbody_manybody_1m.yaml"],
                    help="further run configs whose model's step rate is measured too")
    ap.add_argument("--n-tokens", type=int, default=None, help="tokens per sample (default: the config's)")
    ap.add_argument("--sp", type=int, default=None, help="SP size (default: the config's)")
    ap.add_argument("--samples", type=int, default=16, help="train samples of the generated store")
    ap.add_argument("--step-tokens", type=int, nargs="+", default=[4096],
                    help="tokens of the measured training steps (one rank's block or less)")
    ap.add_argument("--step-repeats", type=int, default=1)
    ap.add_argument("--pipeline-steps", type=int, default=3)
    ap.add_argument("--generated-batches", type=int, default=2, help="batches timed from GeneratedRecall")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the worker run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see benchmarks/README.md)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = ap.parse_args()
    harness.set_threads(args.threads)

    from dist_hyena.data import GeneratedRecall
    from dist_hyena.train.config import load_config

    cfg = load_config(args.config)
    n = args.n_tokens or cfg.data.generate.get("n_tokens")
    sp = args.sp or cfg.parallel.sp
    batch_size = cfg.train.batch_size
    if args.quick:
        n, sp, batch_size, args.samples, args.step_tokens, args.pipeline_steps = 4096, 2, 2, 4, [512], 2
        args.models, args.generated_batches = [], 1
    args.out = harness.results_dir(args)
    machine = harness.machine()
    with tempfile.TemporaryDirectory() as tmp:
        store, generation_s = make_store(Path(tmp) / "recall", n, args.samples, sp)
        rank = {"sp_rank": 0, "sp_size": sp}
        delivery = {
            "store_thread": time_loader(store, batch_size, **rank),
            "store_workers": time_loader(store, batch_size, num_workers=args.workers, **rank),
            "generated_thread": time_loader(GeneratedRecall(n, seed=0, sizes={"train": args.samples}), batch_size,
                                            max_batches=args.generated_batches, **rank),
        }
        whole = {"raw_sequential_file_read": time_raw_files(store), "zarr_sequential_decode": time_zarr_decode(store),
                 "loader_one_process": time_loader(store, batch_size)}
        steps = [time_step(c, t, args.step_repeats) for c in [args.config, *args.models] for t in args.step_tokens]
        n_pipe = min(args.step_tokens)
        pipe_store, _ = make_store(Path(tmp) / "pipe", n_pipe * sp, args.pipeline_steps + 1, sp)
        pipe = pipelined(args.config, pipe_store, sp, args.pipeline_steps)
    consumption = max(s["tokens_per_s"] for s in steps)
    payload = {
        "benchmark": "loader_throughput", "machine": machine,
        "long_context": {"config": args.config.name, "n_tokens": n, "sp": sp, "tokens_per_rank": n // sp,
                         "batch_size": batch_size, "store_samples": args.samples, "generation_s": generation_s},
        "delivery_per_rank": delivery, "whole_store": whole, "step_consumption_per_rank": steps,
        "ratio_delivery_over_consumption": {k: v["tokens_per_s"] / consumption for k, v in delivery.items()},
        "consumption_tokens_per_s_used": consumption, "pipelined": pipe,
    }
    harness.save("loader_throughput", payload, args.out, config=harness.settings(args),
                 required=("long_context", "delivery_per_rank", "step_consumption_per_rank",
                           "ratio_delivery_over_consumption", "pipelined"))


if __name__ == "__main__":
    main()
