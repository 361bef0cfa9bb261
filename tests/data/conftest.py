"""Shared pieces of the data tests: small stores made once per session, and running the
preprocessing scripts as real processes (one process or real MPI ranks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dist_hyena.data import generate_store
from tests.helpers.launch import REPO_ROOT, mpiexec_args

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


def script_cmd(script: str, args: list[str], ranks: int | None = None) -> list[str]:
    """`python datasets/<script> args`, under `mpiexec -n ranks` when ranks is given; start it
    with tests/helpers/launch.py's start() (clean rank variables, PYTHONPATH = repo root)."""
    cmd = [sys.executable, str(REPO_ROOT / "datasets" / script), *args]
    return cmd if ranks is None else [*mpiexec_args(ranks), *cmd]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path: two stores are the same iff these are equal."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def manybody_store(tmp_path_factory) -> Path:
    return generate_store("manybody", tmp_path_factory.mktemp("mb") / "store", seed=3, **SMALL_MANYBODY)


@pytest.fixture(scope="session")
def recall_store(tmp_path_factory) -> Path:
    return generate_store("recall", tmp_path_factory.mktemp("rc") / "store", seed=5, **SMALL_RECALL)
