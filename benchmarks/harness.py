"""Shared plumbing for the benchmark scripts: one fresh subprocess per measured point, capped memory, peak RSS.

Why a subprocess per point: ``ru_maxrss`` is a process-lifetime high-water mark, so a fresh process gives a
clean peak for exactly one configuration, and an out-of-memory failure (capped with ``RLIMIT_AS``, so the
allocator raises instead of the kernel killing the machine) stays in that process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GIB = 2**30


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo: what can be allocated now without pushing others into swap/OOM."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cap_memory(limit_bytes: int) -> None:
    """Let this process map at most ``limit_bytes`` more virtual memory than it has now; past that,
    allocations fail with an error (reported as "does not fit") instead of waking the OOM killer."""
    vm_now = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm_now + limit_bytes, resource.RLIM_INFINITY))


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "can't allocate memory" in str(err) or "not enough memory" in str(err)


def timed(fn, min_repeats: int = 1, max_repeats: int = 3, budget_s: float = 5.0) -> list[float]:
    """Run ``fn`` once to warm up, then time it up to ``max_repeats`` times (fewer once ``budget_s`` is spent)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_point(script: str, point: dict, timeout_s: float, ranks: int = 1, env_changes: dict | None = None) -> dict:
    """Run ``script --point JSON`` in a fresh interpreter (``ranks`` > 1: as that many ranks under torchrun);
    it prints one JSON object as its last stdout line. A crash, a kill or a timeout comes back as
    ``{"fits": False, "error": ...}``. ``env_changes``: variables to set in its environment (None: to unset)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for key, value in (env_changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    try:
        proc = subprocess.run([*launcher, script, "--point", json.dumps(point)], env=env, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**point, "fits": False, "error": f"timeout after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {**point, "fits": False, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def add_point_arguments(ap: argparse.ArgumentParser) -> None:
    """Arguments of every script that measures through ``run_point``: its hidden ``--point``, threads, output."""
    ap.add_argument("--point", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see benchmarks/README.md)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")


def serve_point(args: argparse.Namespace, measure) -> bool:
    """The child side of ``run_point``: measure the ``--point`` given, print its JSON (unless ``measure``
    returns None: the other ranks of a multi-rank point). -> whether there was a point."""
    set_threads(args.threads)
    if not args.point:
        return False
    point = json.loads(args.point)
    set_threads(point["threads"])
    result = measure(point)
    if result is not None:  # under torchrun only rank 0 reports
        print(json.dumps(result))
    return True


def median(values: list[float]) -> float:
    return statistics.median(values)


def save(name: str, payload: dict, out_dir: Path = RESULTS, required: tuple[str, ...] = (),
         config: dict | None = None) -> Path:
    """Write ``payload`` (the script's sections, with its ``benchmark`` name) in the result envelope
    (benchmarks/envelope.py) as ``<out_dir>/<name>.json`` and print it. ``required``: the sections the script's
    readers need, checked before anything is written; ``config``: the settings it ran with (default: the
    payload's own ``config`` section, else none)."""
    from benchmarks import envelope

    enveloped = envelope.wrap(payload["benchmark"], payload, machine=payload.get("machine") or machine(),
                              config=config, command=envelope.command_line())
    path = envelope.write(out_dir / f"{name}.json", enveloped, required)
    print(json.dumps(enveloped, indent=2))
    return path


def results_dir(args: argparse.Namespace) -> Path:
    """``--out``, else a fresh temporary folder for a ``--quick`` smoke run, else benchmarks/results."""
    return args.out or (Path(tempfile.mkdtemp(prefix="bench-")) if args.quick else RESULTS)


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def settings(args: argparse.Namespace) -> dict:
    """A script's parsed arguments as the ``config`` of its result (paths as strings; not the hidden --point)."""
    def plain(v):
        return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(v, list | tuple) else v

    return {k: plain(v) for k, v in vars(args).items() if k != "point"}


def machine() -> dict:
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "mem_available_gib": round(available_bytes() / GIB, 1), "load_avg_1m": os.getloadavg()[0]}


def set_threads(n: int) -> None:
    """Intra-op threads. On a shared, oversubscribed machine OpenMP threads spin at barriers waiting for
    each other and small ops get 10-30x slower; one thread per process gives stable numbers there."""
    import torch

    torch.set_num_threads(n)
