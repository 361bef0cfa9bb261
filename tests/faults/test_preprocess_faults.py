"""Preprocessing against real file-system faults: a full disk and a read-only file system.

Both are real kernel limits, made with tmpfs mounts (root is needed, as for the SLURM tests;
file permissions would not do: root bypasses them). The preprocessing CLI reports the
store and the OS error, exits non-zero, and leaves no store marked complete; once the disk
has room again, re-running the same command completes the store to the bytes of a clean run.
(A rank killed midway and re-run: tests/data/test_mpi.py.)
"""

import contextlib
import json
import os
import subprocess

import pytest

from dist_hyena.data import DataError, generate_store, open_store
from tests.data.conftest import script_cmd, tree_bytes
from tests.helpers.launch import finish, start

RECALL = dict(seed=1, n_tokens=256, train=64, val=8, test=8, samples_per_chunk=4)
ARGS = ["--seed", "1", "--n-tokens", "256", "--train", "64", "--val", "8", "--test", "8", "--samples-per-chunk", "4",
        "--no-progress"]


@contextlib.contextmanager
def tmpfs(path, size: str, read_only: bool = False):
    """A real tmpfs of `size` at `path`, unmounted afterwards."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, f"these tests need root and tmpfs mounts: {mounted.stderr.strip()}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _complete(store) -> bool:
    meta = store / "zarr.json"
    return meta.exists() and json.loads(meta.read_text())["attributes"].get("complete") is True


@pytest.mark.timeout(180)
def test_disk_full_is_reported_and_the_rerun_completes(tmp_path):
    with tmpfs(tmp_path / "small", "200k") as disk:
        store = disk / "recall"
        proc = start(script_cmd("recall.py", ["--out", str(store), *ARGS]))
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 1, out[-3000:]
        assert "error (rank 0): writing train samples" in out and f"of {store}: No space left on device" in out
        assert "the store is not marked complete" in out
        assert not _complete(store)
        with pytest.raises(DataError, match="incomplete"):
            open_store(store)
        # Room again (the same file system grown): the same command completes what is missing.
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        finish(start(script_cmd("recall.py", ["--out", str(store), *ARGS])), timeout=120)
        clean = generate_store("recall", tmp_path / "clean", **RECALL)
        assert tree_bytes(store) == tree_bytes(clean)


@pytest.mark.timeout(120)
def test_read_only_file_system_is_reported(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        store = disk / "recall"
        proc = start(script_cmd("recall.py", ["--out", str(store), *ARGS]))
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 1, out[-3000:]
        assert f"cannot create the store at {store}: Read-only file system" in out, out[-3000:]
        assert not os.listdir(disk)
