"""What the readers and the trainer know of a task: its inputs, its loss, its metrics, the head it trains.

A store's (or generated source's) ``meta["task"]`` names its task; :func:`task_of` gives the object, so no
reader or trainer branches on the name. Inputs are, for sample ids and a token block [t0, t1):
  x [B, n, C_in, 3]  next frame: position (and velocity) at the input frame; recall: the token
  f [B, n, S]        next frame: per-token invariants (charge; atom mass, partial charge); recall: positions code
  y                  next frame: [B, n, 1, 3] positions at the target frame (one target per token);
                     recall: [B, 1, 3] (one per sample, the same on every sequence-parallel rank)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

Gather = Callable[[str, np.ndarray, tuple], np.ndarray]  # (array, sample ids, per-sample selection) -> values


class NextFrame:
    """Predict every token's position at a later frame (``nbody``: simulated bodies; ``md``: atoms of a
    trajectory). Metrics: MSE per coordinate, and the same for two references on the same batches: ``static``
    (the input positions, "nothing moves") and, where the inputs hold velocities, ``constant_velocity``
    (x + Δt v, Δt the time between the frames)."""

    head = "nbody"
    per_token = True

    def __init__(self, name: str, scalars: tuple[str, ...], permutable: bool):
        self.name, self.scalars, self.permutable = name, scalars, permutable

    def read(self, meta: dict, gather: Gather, indices: np.ndarray, t0: int, t1: int) -> dict[str, np.ndarray]:
        tok, frame_in = slice(t0, t1), meta["input_frame"]
        vectors = ["positions"] + (["velocities"] if "velocities" in meta["arrays"] else [])
        x = np.stack([gather(v, indices, (frame_in, tok, slice(None))) for v in vectors], axis=2)
        scalars = [gather(s, indices, (tok,)) for s in self.scalar_arrays(meta)]
        f = np.stack(scalars, axis=-1) if scalars else np.zeros((*x.shape[:2], 0), dtype=x.dtype)
        y = gather("positions", indices, (meta["target_frame"], tok, slice(None)))[:, :, None]
        return {"x": x, "f": f, "y": y}

    def scalar_arrays(self, meta: dict) -> list[str]:
        return list(meta.get("scalars", self.scalars))

    def squared_error(self, pred: torch.Tensor, y: torch.Tensor, n_tokens: int,
                      sp: int) -> tuple[torch.Tensor, float, int]:
        """-> (this rank's sum of squared errors, its element count, the element count of its sp group's whole
        micro-batch): every rank holds its own tokens' targets."""
        return (pred - y).square().sum(), y.numel(), y.shape[0] * n_tokens * y.shape[2] * 3

    def eval_sums(self, meta: dict, pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mesh) -> dict[str, float]:
        y = y.float()
        sums = {"sse": (pred - y).square().sum().item(), "count": float(y.numel()),
                "static_sse": (x[:, :, :1].float() - y).square().sum().item()}
        if x.shape[2] > 1:
            guess = x[:, :, :1].double() + time_between_frames(meta) * x[:, :, 1:2].double()
            sums["constant_velocity_sse"] = (guess - y).square().sum().item()
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = {"mse": sums["sse"] / sums["count"], "static_mse": sums["static_sse"] / sums["count"]}
        if "constant_velocity_sse" in sums:
            out["constant_velocity_mse"] = sums["constant_velocity_sse"] / sums["count"]
        return out


def time_between_frames(meta: dict) -> float:
    """Δt between a sample's input and target frames, in the store's time unit."""
    if "time_step_ps" in meta:
        return float(meta["time_step_ps"])
    p = meta["params"]  # a simulated store: recorded steps times the integrator's step
    steps = p["record_steps"]
    return (steps[meta["target_frame"]] - steps[meta["input_frame"]]) * p["dt"]


class Recall:
    """Associative recall: one target vector per sample. Metrics: MSE per coordinate and accuracy
    (:func:`recall_hits`)."""

    name = head = "recall"
    per_token = False
    permutable = False

    def read(self, meta: dict, gather: Gather, indices: np.ndarray, t0: int, t1: int) -> dict[str, np.ndarray]:
        from dist_hyena.data.recall_task import POSITION_DIM, invariant_input

        tokens = gather("tokens", indices, (slice(t0, t1), slice(None)))
        code = invariant_input(meta["n_tokens"], meta["position_encoding"].get("of", "index"), t0, t1)
        return {"x": tokens[:, :, None], "f": np.broadcast_to(code, (len(indices), t1 - t0, POSITION_DIM)),
                "y": gather("target", indices, (slice(None),))[:, None]}

    def squared_error(self, pred: torch.Tensor, y: torch.Tensor, n_tokens: int,
                      sp: int) -> tuple[torch.Tensor, float, int]:
        """Every sp rank holds the same target: each counts 1/sp of it."""
        return (pred - y).square().sum() / sp, y.numel() / sp, y.numel()

    def eval_sums(self, meta: dict, pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mesh) -> dict[str, float]:
        sp = mesh.sp if mesh is not None else 1
        hit = recall_hits(pred, x, y, mesh.sp_group if sp > 1 else None)
        return {"sse": (pred - y).square().sum().item() / sp, "count": y.numel() / sp,
                "hits": hit.sum().item() / sp, "samples": hit.numel() / sp}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"mse": sums["sse"] / sums["count"], "accuracy": sums["hits"] / sums["samples"]}


def recall_hits(pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sp_group=None) -> torch.Tensor:
    """Associative-recall accuracy per sample [B] (bool): the prediction is nearer to the target value than to
    every other vector of the sequence (the nearest-neighbour read-out over the sequence's own vocabulary; chance
    is about 1 / vocab_size). `x` [B, n, 1, 3] is this rank's token block; with `sp_group` the nearest other
    vector is found over the whole sequence (an all-reduce MIN), so every sp rank returns the same answer."""
    tokens, target, p = x[:, :, 0].float(), y[:, 0].float(), pred[:, 0]
    other = ((tokens - target[:, None]).norm(dim=-1) > 1e-5) & (tokens.norm(dim=-1) > 0)  # not the target, no pad
    nearest_other = (tokens - p[:, None]).norm(dim=-1).masked_fill(~other, math.inf).amin(dim=1)
    if sp_group is not None and dist.get_world_size(sp_group) > 1:
        dist.all_reduce(nearest_other, op=dist.ReduceOp.MIN, group=sp_group)
    return (p - target).norm(dim=-1) < nearest_other


TASKS = {
    "nbody": NextFrame("nbody", scalars=("charges",), permutable=True),
    "md": NextFrame("md", scalars=(), permutable=False),  # its store lists its scalars (meta["scalars"])
    "recall": Recall(),
}


def task_of(meta: dict):
    """The task of a store's or source's metadata (``meta["task"]``)."""
    name = meta.get("task")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} in the dataset's attributes; known: {sorted(TASKS)}")
    return TASKS[name]
