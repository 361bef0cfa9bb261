"""Preprocessing with real MPI ranks: parallel = serial, byte for byte, and a run killed
midway completes on a re-run to the same bytes as a clean run."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dist_hyena.data import DataError, generate_store, open_store
from tests.data.conftest import run_script, script_cmd, script_env, tree_bytes

NBODY5_TINY = ["--train", "8", "--val", "4", "--test", "4", "--samples-per-chunk", "2"]


@pytest.mark.timeout(120)
def test_mpi_store_equals_serial_store_and_verifies(tmp_path):
    out = tmp_path / "mpi"
    run_script(
        "nbody.py", ["--preset", "nbody5", "--out", str(out), "--seed", "7", "--no-progress", *NBODY5_TINY], ranks=2
    )
    serial = generate_store("nbody5", tmp_path / "serial", seed=7, train=8, val=4, test=4, samples_per_chunk=2)
    assert tree_bytes(out) == tree_bytes(serial)
    check = run_script("nbody.py", ["--out", str(out), "--verify"], ranks=2)
    assert f"{out}: OK" in check.stdout


@pytest.mark.timeout(120)
def test_mpi_recall_store_equals_serial_store(tmp_path):
    args = [
        "--n-tokens",
        "10",
        "--variant",
        "fixed",
        "--train",
        "9",
        "--val",
        "3",
        "--test",
        "3",
        "--samples-per-chunk",
        "2",
        "--tokens-per-chunk",
        "4",
        "--seed",
        "2",
        "--no-progress",
    ]
    run_script("recall.py", ["--out", str(tmp_path / "mpi"), *args], ranks=2)
    serial = generate_store(
        "recall",
        tmp_path / "serial",
        seed=2,
        n_tokens=10,
        variant="fixed",
        train=9,
        val=3,
        test=3,
        samples_per_chunk=2,
        tokens_per_chunk=4,
    )
    assert tree_bytes(tmp_path / "mpi") == tree_bytes(serial)


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
    args = [
        "--preset",
        "manybody",
        "--out",
        str(out),
        "--seed",
        "1",
        "--n-bodies",
        "48",
        "--record-steps",
        "0",
        "150",
        "--train",
        "10",
        "--val",
        "2",
        "--test",
        "2",
        "--samples-per-chunk",
        "1",
        "--tokens-per-chunk",
        "16",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        script_cmd("nbody.py", args, ranks=2),
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    digests = out / "train" / "unit_sha256" / "c"
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(list(digests.glob("*"))) < 2:
            time.sleep(0.05)
        victims = _rank_pids(str(out))
        assert 1 in victims, "rank 1 not found running"
        os.kill(victims[1], signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    done = len(list(digests.glob("*")))
    assert 2 <= done < 10, f"{done} units done when the rank was killed"
    with pytest.raises(DataError, match="incomplete"):
        open_store(out)
    run_script("nbody.py", args, ranks=2)
    clean = generate_store(
        "manybody",
        tmp_path / "clean",
        seed=1,
        n_bodies=48,
        record_steps=(0, 400),
        train=10,
        val=2,
        test=2,
        samples_per_chunk=1,
        tokens_per_chunk=16,
    )
    assert tree_bytes(out) == tree_bytes(clean)


def test_help_explains_the_options():
    helps = {
        name: subprocess.Popen(script_cmd(name, ["--help"]), env=script_env(), stdout=subprocess.PIPE, text=True)
        for name in ("nbody.py", "recall.py")
    }  # together: each pays the torch import
    text = {name: p.communicate(timeout=60)[0] for name, p in helps.items()}
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
        assert option in text["nbody.py"]
    for option in ("--n-tokens", "--variant", "--vocab-size", "--samples-per-chunk", "--tokens-per-chunk"):
        assert option in text["recall.py"]
