"""Checkpoints: DeepSpeed's own, plus each rank's data-loader position and RNG states.

A checkpoint is written under a `<tag>.partial` directory by every rank and renamed to
`<tag>` by rank 0 only after every rank has finished, then `latest` is replaced
atomically; so a directory named `step_<n>` is always complete, and an interrupted save
leaves only a `.partial` directory that resume ignores and the next save removes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

_TAG = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit this run; the message names the checkpoint and what differs."""


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def complete_tags(root: Path) -> list[str]:
    """Tags of the complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in root.iterdir() if p.is_dir() and (m := _TAG.match(p.name))]
    return [name for _, name in sorted(found)]


def save(engine, root: Path, step: int, trainer_state: dict, keep: int) -> Path:
    """Write the checkpoint of `step` (collective); `trainer_state` is this rank's own state."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_of(step)
    partial = root / f"{tag}.partial"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a save that was interrupted
    _barrier()
    engine.save_checkpoint(str(root), tag=partial.name, save_latest=False)
    torch.save({**trainer_state, "rng": rng_state()}, partial / f"trainer_rank{rank:05d}.pt")
    _barrier()
    if rank == 0:
        final = root / tag
        shutil.rmtree(final, ignore_errors=True)  # the same step saved again after a resume
        os.replace(partial, final)
        latest_tmp = root / "latest.tmp"
        latest_tmp.write_text(tag)
        os.replace(latest_tmp, root / "latest")
        if keep > 0:
            for old in complete_tags(root)[:-keep]:
                shutil.rmtree(root / old)
    _barrier()
    return root / tag


def load(engine, root: Path, tag: str, model_config: dict | None = None) -> dict:
    """Restore engine, optimizer, schedule and this rank's RNG; -> this rank's trainer state.
    `model_config`: the run's model settings, which must equal those the checkpoint was saved with."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    own = root / tag / f"trainer_rank{rank:05d}.pt"
    if not own.exists():
        raise CheckpointError(f"{own} is missing: the checkpoint was written by a different number of ranks")
    state = torch.load(own, weights_only=False)
    saved = state.get("model")
    if model_config is not None and saved is not None and saved != model_config:
        diff = {k: (saved.get(k), model_config.get(k)) for k in sorted(set(saved) | set(model_config))
                if saved.get(k) != model_config.get(k)}
        raise CheckpointError(f"checkpoint {root / tag} was saved by a different model (saved vs this run: {diff}); "
                              "resume with the model settings it was trained with, or use another run.name")
    path, _ = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint {root / tag}")
    set_rng_state(state.pop("rng"))
    return state
