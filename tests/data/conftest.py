"""Shared pieces of the data tests: small stores made once per session, and running the
preprocessing scripts as real processes (one process or real MPI ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dist_hyena.data import generate_store

REPO_ROOT = Path(__file__).resolve().parents[2]
# Variables through which a launcher hands out ranks; a child must not inherit pytest's.
_RANK_PREFIXES = ("OMPI_", "PMI_", "PMIX_", "SLURM_")

# A tiny many-body store with several chunks along samples (uneven) and tokens.
SMALL_MANYBODY = dict(
    train=20,
    val=6,
    test=6,
    samples_per_chunk=3,
    tokens_per_chunk=3,
    n_bodies=12,
    record_steps=(0, 5),
    token_order="radial",
)
SMALL_RECALL = dict(train=12, val=4, test=4, samples_per_chunk=4, tokens_per_chunk=4, n_tokens=11)


def script_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_RANK_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # ranks share the machine's cores
    return env


def script_cmd(script: str, args: list[str], ranks: int | None = None) -> list[str]:
    """`python datasets/<script> args`, under `mpiexec -n ranks` when ranks is given."""
    cmd = [sys.executable, str(REPO_ROOT / "datasets" / script), *args]
    if ranks is None:
        return cmd
    root = ["--allow-run-as-root", "--oversubscribe"] if os.geteuid() == 0 else []
    return ["mpiexec", *root, "-n", str(ranks), *cmd]


def run_script(
    script: str, args: list[str], ranks: int | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        script_cmd(script, args, ranks),
        env=script_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path: two stores are the same iff these are equal."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def manybody_store(tmp_path_factory) -> Path:
    return generate_store("manybody", tmp_path_factory.mktemp("mb") / "store", seed=3, **SMALL_MANYBODY)


@pytest.fixture(scope="session")
def recall_store(tmp_path_factory) -> Path:
    return generate_store("recall", tmp_path_factory.mktemp("rc") / "store", seed=5, **SMALL_RECALL)
