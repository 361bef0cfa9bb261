"""One SE(3)-Hyena block, forward + backward, at sp = 1 and sp = 2: time, peak memory, traffic.

    PYTHONPATH=. python benchmarks/sp_block.py [--config configs/benchmarks/sp_block.yaml]
                                               [--tokens 16384,1048576] [--out results.json]

Every (N, sp, strategy) runs in fresh processes (gloo ranks on CPU, NCCL when there are
GPUs), so each peak is that run's own. Memory is the peak resident set size of each rank
process (``getrusage`` ru_maxrss), reported as the peak and as the growth over the RSS
measured once the block is built (the activations, buffers and FFT workspace). On GPUs it is
``torch.cuda.max_memory_allocated``. Traffic comes from the communication ledger, summed
over the SP group, and is checked to equal the closed-form volume exactly
(``dist_hyena.parallel.volume``); the script fails if it does not. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dist_hyena import HyenaConfig  # noqa: E402
from dist_hyena.model import HyenaBlock  # noqa: E402
from dist_hyena.parallel import init_mesh, ledger, shard_sequence  # noqa: E402
from dist_hyena.parallel.volume import bytes_per_token, conv_bytes  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rank(rank: int, world: int, port: int, job: dict, out_dir: str) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    limit = int(job["memory_limit_gib_per_rank"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # One core per rank, like one accelerator per rank: sp = 2 then uses twice the compute of sp = 1.
    torch.set_num_threads(job["threads_per_rank"])
    mesh = None
    if job["sp"] > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
        mesh = init_mesh(sp=world)
    dtype = DTYPES[job["dtype"]]
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
    rss_built = _rss_mib()

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
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_mib": rss_built,
        "ledger": {f"{layer}|{op}": b for (layer, op), b in log.totals().items()},
    }
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    with open(Path(out_dir) / f"rank{rank}.json", "w") as fh:
        json.dump(result, fh)
    if mesh is not None:
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(job: dict) -> dict:
    """Run one (N, sp, strategy) in fresh processes; summarise over ranks."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(job["sp"], _free_port(), job, tmp), nprocs=job["sp"], join=True)
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(job["sp"])]
    summary = {
        "run": job["run"], "n_tokens": job["n_tokens"], "sp": job["sp"], "strategy": job["strategy"] or "one process",
        "time_fwd_bwd_s": max(r["time_s"] for r in ranks),  # the step ends when the slowest rank does
        # CPU seconds each rank spent (all its threads): the work per rank, whatever else shares the machine.
        "cpu_time_s_per_rank": [round(r["cpu_time_s"], 3) for r in ranks],
        "peak_rss_mib_per_rank": [round(r["peak_rss_mib"], 1) for r in ranks],
        "peak_rss_growth_mib_per_rank": [round(r["peak_rss_mib"] - r["rss_after_build_mib"], 1) for r in ranks],
        # Timings on a shared machine are only as good as its load: keep it beside them.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if "peak_cuda_mib" in ranks[0]:
        summary["peak_cuda_mib_per_rank"] = [round(r["peak_cuda_mib"], 1) for r in ranks]
    if job["sp"] > 1:
        summary.update(_traffic(job, ranks))
    return summary


def _traffic(job: dict, ranks: list[dict]) -> dict:
    """Ledger (summed over ranks) vs closed-form volume: must agree to the byte."""
    measured: dict[str, int] = {}
    for r in ranks:
        for key, nbytes in r["ledger"].items():
            op = key.split("|", 1)[1]
            measured[op] = measured.get(op, 0) + nbytes
    m = job["model"]
    itemsize = torch.finfo(torch.promote_types(DTYPES[job["dtype"]], torch.float32)).bits // 8
    if job["strategy"] == "channels":
        itemsize = torch.finfo(DTYPES[job["dtype"]]).bits // 8
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
        "theory_bytes_per_token_per_layer": sum(b for op, b in theory.items() if op != "token_counts") / n,
        "even_split_closed_form_bytes_per_token": bytes_per_token(job["strategy"], job["conv_mode"], job["sp"],
                                                                  m["vector_width"], m["scalar_width"], itemsize),
        "ledger_equals_theory": True,
        "bytes_by_op": measured,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/benchmarks/sp_block.yaml")
    parser.add_argument("--tokens", help="comma-separated N, overrides the config")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
    results = []
    for run in cfg["runs"]:
        tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else run["tokens"]
        n_groups = run["model"]["vector_width"] + run["model"]["scalar_width"]
        for n in tokens:
            for sp in cfg["sp"]:
                strategies = [s for s in cfg["strategies"] if s != "channels" or n_groups >= sp] if sp > 1 else [None]
                for strategy in strategies:
                    job = dict(run=run["name"], n_tokens=n, sp=sp, strategy=strategy, model=run["model"],
                               **{k: cfg[k] for k in ("conv_mode", "dtype", "warmup", "repeats", "threads_per_rank",
                                                      "memory_limit_gib_per_rank")})
                    try:
                        results.append(run_job(job))
                    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
                        # Reported, not hidden: e.g. a run past memory_limit_gib_per_rank.
                        results.append({k: job[k] for k in ("run", "n_tokens", "sp", "strategy")}
                                       | {"error": str(e).strip().splitlines()[-1]})
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "benchmark": "sp_block", "config": cfg,
        "machine": {"cpus": os.cpu_count(), "cuda": torch.cuda.is_available(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "memory": "peak RSS per rank process (getrusage ru_maxrss); growth = peak - RSS after building the block",
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
