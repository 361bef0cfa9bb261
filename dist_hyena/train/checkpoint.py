"""Checkpoints: DeepSpeed's own, plus the run's position (step, data-loader state, best validation) and RNG states.

A checkpoint is written under a `<tag>.partial` directory by every rank and renamed to
`<tag>` by rank 0 only after every rank has finished, then `latest` is replaced
atomically; so a directory named `step_<n>` is always complete, and an interrupted save
leaves only a `.partial` directory that resume ignores and the next save removes.

Resume on another layout (docs/design.md §5): each checkpoint records the layout that wrote it (dp, sp, world
size, ZeRO stage). A run resumed at another layout reads the layout-independent state (step, loader, best) from
rank 0's file; DeepSpeed's universal checkpoint reshards the ZeRO-partitioned fp32 weights and optimizer state
(:func:`plan` converts the checkpoint once, `deepspeed.checkpoint.ds_to_universal`, and the engine is built with
``checkpoint.load_universal``); each rank's RNG, which belongs to a rank of the old layout, is re-seeded from
(seed, step, rank). Only the model's architecture must match (`HyenaConfig.architecture`).

The files of our own state hold tensors and plain Python values only and are read with
``torch.load(weights_only=True)``: a checkpoint directory from elsewhere cannot run code through them.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dist_hyena.config import HyenaConfig, architecture_difference
from dist_hyena.runtime import on_rank0

_TAG = re.compile(r"^step_(\d+)$")
# 1: per-rank loader positions, numpy RNG arrays, the whole model config (before layouts could change);
# 2: a layout record, a layout-independent loader state, RNG states as tensors and plain values.
FORMAT = 2
# What the version-1 files hold besides tensors and plain values: numpy's RNG state array.
_FORMAT1_GLOBALS = (np.ndarray, np.dtype, np.dtype(np.uint32).__class__, np._core.multiarray._reconstruct)


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit this run; the message names the checkpoint and what differs."""


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (what ``weights_only`` loading accepts)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])
    np.random.set_state(numpy_state)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed torch, numpy and Python's RNG from (seed, step, rank): a rank's streams after a layout change."""
    value = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def complete_tags(root: Path) -> list[str]:
    """Tags of the complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in root.iterdir() if p.is_dir() and (m := _TAG.match(p.name))]
    return [name for _, name in sorted(found)]


def save(engine, root: Path, step: int, trainer_state: dict, keep: int) -> Path:
    """Write the checkpoint of `step` (collective); `trainer_state` is this rank's own state."""
    rank = _rank()
    tag = tag_of(step)
    partial = root / f"{tag}.partial"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a save that was interrupted
    _barrier()
    engine.save_checkpoint(str(root), tag=partial.name, save_latest=False)
    torch.save({**trainer_state, "format": FORMAT, "rng": rng_state()}, partial / f"trainer_rank{rank:05d}.pt")
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


def read_state(path: Path) -> dict:
    """One trainer state file, read without running code from it; format checked."""
    try:
        with torch.serialization.safe_globals(list(_FORMAT1_GLOBALS)):
            state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
    except Exception as e:  # an UnpicklingError names the global that weights_only refused
        why = str(e).split("WeightsUnpickler error:")[-1].strip().split("\n\n")[0].split(". Please use")[0]
        raise CheckpointError(f"{path}: not a dist_hyena trainer state, refused without running it "
                              f"(torch.load(weights_only=True): {why})") from None
    version = state.get("format", 1)
    if version not in (1, FORMAT):
        raise CheckpointError(f"{path}: checkpoint format {version!r}, but this dist_hyena reads formats 1 to "
                              f"{FORMAT}: resume it with the dist_hyena version that wrote it")
    return state


def _saved_layout(directory: Path, state: dict) -> dict:
    """The layout that wrote a checkpoint. Format 1 recorded none: its world size is its count of rank files, and
    ZeRO (stage 1-3, not told apart) wrote optimizer shards."""
    if "layout" in state:
        return state["layout"]
    zero = any(directory.glob("*optim_states.pt"))
    return {"world": len(list(directory.glob("trainer_rank*.pt"))), "zero_stage": None if zero else 0}


def describe(layout: dict) -> str:
    if "dp" not in layout:
        return f"{layout['world']} ranks"
    return f"dp {layout['dp']} x sp {layout['sp']}, ZeRO-{layout['zero_stage']}"


@dataclass
class Resume:
    """What :func:`plan` found: the checkpoint to continue, how to load it, and its layout-independent state."""

    root: Path
    tag: str
    state: dict  # rank 0's trainer state: step, loader, best, model, layout
    saved_layout: dict
    layout: dict  # this run's
    universal: bool  # DeepSpeed reshards it: build the engine with checkpoint.load_universal

    @property
    def same_layout(self) -> bool:
        if "dp" not in self.saved_layout:  # format 1: the same rank count is all it can tell (and all it needed)
            return self.saved_layout["world"] == self.layout["world"]
        return self.saved_layout == self.layout

    @property
    def load_dir(self) -> Path:
        return self.root / "universal" if self.universal else self.root

    def message(self) -> str:
        if self.same_layout:
            return f"resumed from {self.tag}"
        how = "DeepSpeed's universal checkpoint resharded the weights and optimizer state" if self.universal else \
            "ZeRO-0 keeps whole optimizer state on every rank"
        return (f"resumed from {self.tag} on another layout: saved at {describe(self.saved_layout)}, now "
                f"{describe(self.layout)}; {how}; RNG re-seeded from (seed, step, rank)")


def plan(root: Path, tag: str, layout: dict, model_cfg: HyenaConfig) -> Resume:
    """Read checkpoint `root/tag` for a run of `layout` ({dp, sp, world, zero_stage}); refuse another architecture;
    when the layout differs and ZeRO partitions the state, convert it to a universal checkpoint (rank 0, once;
    collective). Every rank calls it before building its engine."""
    directory = root / tag
    state = read_state(directory / "trainer_rank00000.pt")
    saved = state.get("model")
    diff = architecture_difference(saved, model_cfg) if saved is not None else {}
    if diff:
        keys = ", ".join(f"model.{k}: saved {a!r}, this run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {directory} was saved by a different model ({keys}); resume with the "
                              "architecture it was trained with, or use another run.name")
    saved_layout = _saved_layout(directory, state)
    resume = Resume(root, tag, state, saved_layout, layout, universal=False)
    if resume.same_layout:
        return resume
    stages = (saved_layout.get("zero_stage"), layout["zero_stage"])
    if stages == (0, 0):
        return resume
    families = [_stage_family(stage) for stage in stages]
    if families[0] != families[1] and None not in stages:
        raise CheckpointError(f"checkpoint {directory} was saved at {describe(saved_layout)}; this run is "
                              f"{describe(layout)}: DeepSpeed's universal checkpoint converts ZeRO-1 and ZeRO-2 "
                              "into each other and ZeRO-3 into ZeRO-3, at any dp and sp, but not between "
                              f"{families[0]} and {families[1]} state: resume with train.deepspeed at ZeRO stage "
                              f"{stages[0]} (the saved one), at any layout")
    if 0 in stages:
        raise CheckpointError(f"checkpoint {directory} was saved by {describe(saved_layout)} before checkpoints "
                              f"recorded their ZeRO stage: resume it with that rank count (this run: "
                              f"{describe(layout)})")
    resume.universal = True
    on_rank0(lambda: _convert_to_universal(directory, root / "universal" / tag),
             lambda e: str(e) if isinstance(e, CheckpointError) else
             f"converting {directory} to a universal checkpoint: {type(e).__name__}: {e}", CheckpointError)
    return resume


def _stage_family(stage: int | None) -> str:
    return {0: "unpartitioned (ZeRO-0)", 1: "ZeRO-1/2", 2: "ZeRO-1/2", 3: "ZeRO-3"}.get(stage, "ZeRO")


def _convert_to_universal(source: Path, out: Path) -> None:
    """DeepSpeed's own converter, in a process of its own, into `out` (atomically: `out.partial`, renamed)."""
    if out.is_dir():
        return  # converted by an earlier attempt at this resume
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
               "--output_folder", str(partial), "--num_extract_workers", "1", "--num_merge_workers", "1",
               "--inject_missing_state"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise CheckpointError(f"converting {source} to a universal checkpoint failed ({' '.join(command)}):\n{tail}")
    os.replace(partial, out)
    (out.parent / "latest_universal").write_text(out.name)  # the converter named the .partial folder


def load(engine, resume: Resume, seed: int) -> dict:
    """Restore engine, optimizer and schedule (resharded when `resume.universal`) and this rank's RNG (re-seeded
    on another layout); -> the run's trainer state (step, loader, best). Collective."""
    rank = _rank()
    state = resume.state
    if resume.same_layout:
        state = read_state(resume.root / resume.tag / f"trainer_rank{rank:05d}.pt")
    path, _ = engine.load_checkpoint(str(resume.load_dir), tag=resume.tag)
    if path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint {resume.load_dir / resume.tag}")
    if resume.same_layout:
        set_rng_state(state["rng"])
    else:
        reseed(seed, state["step"], rank)
    _barrier()
    if resume.universal and rank == 0:
        shutil.rmtree(resume.load_dir / resume.tag, ignore_errors=True)  # as large as the checkpoint; loaded
    return {k: v for k, v in state.items() if k != "rng"}
