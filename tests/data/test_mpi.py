"""Preprocessing with real MPI ranks: parallel = serial, byte for byte, and a run killed
midway completes on a re-run to the same bytes as a clean run. Scripts that do not depend
on each other run concurrently: each process pays the torch import."""

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from dist_hyena.data import DataError, generate_store, open_store
from tests.data.conftest import script_cmd, tree_bytes
from tests.helpers.launch import finish, start

NBODY5 = dict(seed=7, train=4, val=2, test=2, samples_per_chunk=2, device="cpu")
RECALL = dict(seed=2, n_tokens=10, variant="fixed", train=9, val=3, test=3, samples_per_chunk=2, tokens_per_chunk=4)
KILLED = dict(
    seed=1,
    n_bodies=48,
    record_steps=(0, 600),
    train=8,
    val=1,
    test=1,
    samples_per_chunk=1,
    tokens_per_chunk=16,
    device="cpu",  # CPU units take long enough (~0.4 s each) for the kill to land midway
)


def cli_args(out: Path, **settings) -> list[str]:
    """The command-line form of generate_store's keyword arguments."""
    args = ["--out", str(out), "--no-progress"]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else [value])]
    return args


@pytest.mark.timeout(180)
def test_mpi_stores_equal_serial_stores(tmp_path):
    runs = [
        start(script_cmd("nbody.py", ["--preset", "nbody5", *cli_args(tmp_path / "nbody_mpi", **NBODY5)], ranks=2)),
        start(script_cmd("recall.py", cli_args(tmp_path / "recall_mpi", **RECALL), ranks=2)),
    ]
    nbody = generate_store("nbody5", tmp_path / "nbody_serial", **NBODY5)
    recall = generate_store("recall", tmp_path / "recall_serial", **RECALL)
    for proc in runs:
        finish(proc, timeout=120)
    assert tree_bytes(tmp_path / "nbody_mpi") == tree_bytes(nbody)
    assert tree_bytes(tmp_path / "recall_mpi") == tree_bytes(recall)


def _rank_pids(marker: str) -> dict[int, int]:
    """MPI rank -> pid of the processes whose command line contains `marker`."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            if marker not in (proc / "cmdline").read_bytes().decode(errors="ignore"):
                continue
            env = (proc / "environ").read_bytes().decode(errors="ignore").split("\0")
        except OSError:
            continue
        for var in env:
            if var.startswith("OMPI_COMM_WORLD_RANK="):
                ranks[int(var.split("=", 1)[1])] = int(proc.name)
    return ranks


@pytest.mark.timeout(180)
def test_killed_rank_then_rerun_gives_the_clean_store(tmp_path):
    out = tmp_path / "crashed"
    args = ["--preset", "manybody", *cli_args(out, **KILLED)]
    proc = start(script_cmd("nbody.py", args, ranks=2))
    digests = out / "train" / "unit_sha256" / "c"  # one entry per finished unit
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(list(digests.glob("*"))) < 2:
            time.sleep(0.05)
        rank1 = _rank_pids(str(out)).get(1)
        assert rank1, "rank 1 not found running"
        os.kill(rank1, signal.SIGKILL)
        proc.communicate(timeout=60)  # mpiexec ends the job when a rank dies
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    done = len(list(digests.glob("*")))
    assert 2 <= done < 8, f"{done} train units done when the rank was killed"
    with pytest.raises(DataError, match="incomplete"):
        open_store(out)
    rerun = start(script_cmd("nbody.py", args, ranks=2))
    clean = generate_store("manybody", tmp_path / "clean", **KILLED)
    finish(rerun, timeout=120)
    assert tree_bytes(out) == tree_bytes(clean)


@pytest.mark.timeout(120)
def test_help_and_verify_commands(manybody_store, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(manybody_store, broken)
    (broken / "val/charges/c/1/2").unlink()
    procs = {
        "nbody": start(script_cmd("nbody.py", ["--help"])),
        "recall": start(script_cmd("recall.py", ["--help"])),
        "good": start(script_cmd("nbody.py", ["--out", str(manybody_store), "--verify"])),
        "bad": start(script_cmd("nbody.py", ["--out", str(broken), "--verify"])),
    }
    out = {name: finish(p, timeout=90) for name, p in procs.items() if name != "bad"}
    out["bad"] = procs["bad"].communicate(timeout=90)[0]
    for option in (
        "--preset",
        "--out",
        "--seed",
        "--train",
        "--val",
        "--test",
        "--n-bodies",
        "--token-order",
        "--verify",
        "radial",
        "nbody5",
        "manybody",
    ):
        assert option in out["nbody"]
    for option in ("--n-tokens", "--variant", "--vocab-size", "--samples-per-chunk", "--tokens-per-chunk"):
        assert option in out["recall"]
    assert f"{manybody_store}: OK" in out["good"]
    assert procs["bad"].returncode == 1 and "val/charges/c/1/2 is missing" in out["bad"]
