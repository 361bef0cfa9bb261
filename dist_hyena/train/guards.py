"""Fault guards of the step loop: a SIGTERM that ends the job with a checkpoint, and the
non-finite loss / parameter checks (`train.nonfinite`).

Every decision that changes what ranks do next (stop, skip) is taken from an all-reduced
flag, so all ranks take it together and none is left waiting in a collective.
"""

from __future__ import annotations

import math
import signal

import torch
import torch.distributed as dist


class NonFiniteError(RuntimeError):
    """A non-finite loss or parameter; the message names the step and the samples."""


class TerminationRequest:
    """Records SIGTERM (SLURM's time limit and preemption, `scancel`, `kill`) instead of dying,
    so the step loop can finish its step, write a checkpoint and exit. A context manager that
    restores the previous handler."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _handle(self, signum, frame):
        self.received = True

    def __enter__(self) -> TerminationRequest:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def any_rank(flag: bool, device) -> bool:
    """True on every rank if `flag` is True on any rank (collective)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gathered(value) -> list:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def nonfinite_loss_message(step: int, loss: float, indices: torch.Tensor) -> str:
    """Collective: names every rank whose loss is non-finite and its batch's sample ids."""
    bad = [(r, ids) for r, (finite, ids) in enumerate(_gathered((math.isfinite(loss), indices.tolist())))
           if not finite]
    where = "; ".join(f"rank {r}: train samples {ids}" for r, ids in bad)
    return f"step {step}: non-finite loss ({where})"


def parameters_finite(engine) -> bool:
    """Whether this rank's parameters (its ZeRO-3 partition where partitioned) are all finite."""
    for p in engine.module.parameters():
        data = getattr(p, "ds_tensor", p)  # ZeRO-3 keeps a rank's share in ds_tensor
        if data.numel() and not torch.isfinite(data).all():
            return False
    return True


def nonfinite_parameters_message(step: int, indices: torch.Tensor) -> str:
    """Collective: the step whose update made parameters non-finite and the samples of its batch."""
    ids = sorted({i for rank_ids in _gathered(indices.tolist()) for i in rank_ids})
    return (f"step {step}: parameters became non-finite after the update (non-finite gradients) from the "
            f"batch of train samples {ids}; the last checkpoint holds the parameters before it")
