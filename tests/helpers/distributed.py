"""Run a function on P real gloo ranks (spawned processes) and collect what each returns.

    results = run_ranks(fn, world=4, args=(...), timeout=120)

``fn(rank, world, *args)`` runs after ``torch.distributed`` is initialised (gloo, CPU) and
returns something picklable; ``results[r]`` is rank r's value. An exception in any rank is
raised here with its rank id and traceback, and the other ranks are stopped at once (they
would otherwise wait in a collective forever); so is a group that outlives ``timeout``.
``fn`` must be importable by the children (a module-level function of a test module).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from pathlib import Path

from dist_hyena.runtime import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rank_main(fn, rank, world, port, args, results):
    import torch
    import torch.distributed as dist

    # One node: LOCAL_RANK = RANK (DeepSpeed's engine insists on LOCAL_RANK being set).
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # P ranks share the machine's few cores
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        value = fn(rank, world, *args)
        dist.barrier()
        dist.destroy_process_group()
        # Plain pickle copies tensors; a multiprocessing queue would share them and race our exit.
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(fn, world: int, args: tuple = (), timeout: float = 120.0) -> list:
    """Run ``fn(rank, world, *args)`` on ``world`` gloo ranks; return the values in rank order."""
    # Children import the test modules and the package from the repo root.
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, args, results), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    values: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(values) < world:
            try:
                rank, status, payload = results.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in values]
                if dead:
                    raise RuntimeError(f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}") from None
                if time.monotonic() >= deadline:
                    missing = sorted(set(range(world)) - set(values))
                    raise TimeoutError(f"ranks {missing} of {world} did not finish within {timeout:.0f} s") from None
                continue
            if status == "error":
                raise RuntimeError(f"rank {rank} of {world} failed:\n{payload}")
            values[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            if p.is_alive() and len(values) < world:
                p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [values[r] for r in range(world)]


def summed_over_ranks(per_rank: list[dict]) -> dict:
    """Key by key, the sum of every rank's numbers (ledger totals of each rank -> the group's traffic)."""
    total: dict = {}
    for values in per_rank:
        for key, value in values.items():
            total[key] = total.get(key, 0) + value
    return total


def value_error(fn) -> str | None:
    """The message of the ValueError ``fn()`` raises, or None (a rank function's result must be picklable)."""
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def assert_parity(sp: int, results: list, section: str = "parity") -> None:
    """Every rank's errors against the one-process run (``results[r][section]``: case key -> error, the key's
    last item naming the dtype) within the project's bar: float64 <= 1e-10, float32 <= 1e-5 relative."""
    for rank, res in enumerate(results):
        for key, err in res[section].items():
            tol = 1e-10 if str(key[-1]).endswith("float64") else 1e-5
            assert err <= tol, f"sp={sp} rank {rank} {key}: error {err:.3e} > {tol:.0e}"
