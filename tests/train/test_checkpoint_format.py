"""The trainer's own checkpoint files: read with weights_only (no code runs from them), format-versioned, and the
format-1 files of earlier releases still read; what a checkpoint fixes of the model is its architecture only."""

import random

import numpy as np
import pytest
import torch

from dist_hyena.config import EXECUTION_KEYS, HyenaConfig, architecture_difference
from dist_hyena.train import checkpoint
from dist_hyena.train.checkpoint import CheckpointError, read_state


class _Payload:
    """What a hostile checkpoint would carry: unpickling it calls a function of its choice."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_rng_state_round_trips_through_weights_only(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save({"format": checkpoint.FORMAT, "rng": checkpoint.rng_state()}, tmp_path / "s.pt")
    want = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(read_state(tmp_path / "s.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_format_1_files_still_read(tmp_path):
    """Earlier releases saved numpy's RNG state as an array and the loader as per-rank positions."""
    state = {"step": 5, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                "python": random.getstate()},
             "loader": {"epoch": 1, "position": 2, "seed": 0, "split": "train", "dp_rank": 0, "dp_size": 2,
                        "batch_size": 4}}
    torch.save(state, tmp_path / "old.pt")
    got = read_state(tmp_path / "old.pt")
    assert got["step"] == 5 and got.get("format", 1) == 1
    checkpoint.set_rng_state(got["rng"])


def test_a_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "trainer_rank00000.pt"
    torch.save({"step": 1, "payload": _Payload()}, path)
    refused = rf"{path}: not a dist_hyena trainer state.*GLOBAL print was not an allowed global"
    with pytest.raises(CheckpointError, match=refused):
        read_state(path)


def test_an_unknown_format_is_refused_naming_the_file(tmp_path):
    torch.save({"format": checkpoint.FORMAT + 1, "step": 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=rf"new.pt: checkpoint format {checkpoint.FORMAT + 1}.*formats 1 to"):
        read_state(tmp_path / "new.pt")


def test_architecture_ignores_execution_settings_and_fills_old_defaults():
    assert set(EXECUTION_KEYS) == {"sp_strategy", "activation_checkpointing", "mlp_token_chunk"}
    base = HyenaConfig(hidden_width=8)
    run = HyenaConfig(hidden_width=8, activation_checkpointing=True, mlp_token_chunk=4, sp_strategy="fft")
    assert run.architecture() == base.architecture() and set(run.execution()) == set(EXECUTION_KEYS)
    old = {k: v for k, v in base.to_dict().items() if k not in ("source_gate", "zero_update")}  # saved before them
    assert architecture_difference({**old, "mlp_token_chunk": 99}, run) == {}
    assert architecture_difference(base.to_dict(), HyenaConfig(hidden_width=16)) == {"hidden_width": (8, 16)}
