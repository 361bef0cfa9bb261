"""DeepSpeed wiring: the engine over a dp × sp mesh, its optimizer and schedule, and the loss.

The loss follows docs/design.md §3.4. Each rank returns the SUM of its per-element squared errors
divided by the element count of its group's whole micro-batch; DeepSpeed (told the mesh
by :class:`MeshMPU`) sums gradients over the sp group and averages over dp groups, so the
gradient is the single-process gradient of the mean squared error of the global batch.
A recall prediction is one vector per sample, identical on every sp rank (the model's
token mean is an all-reduce whose backward sums too), so each sp rank counts 1/sp of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from dist_hyena.baselines import build_model
from dist_hyena.parallel import Mesh
from dist_hyena.train.config import ConfigError, OptimSection, TrainConfig
from dist_hyena.train.mpu import MeshMPU

# Batch sizes and the optimizer come from the run config; a DeepSpeed JSON that sets them
# too would be a second, silently ignored source of truth.
_OWNED_BY_RUN_CONFIG = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                        "optimizer", "scheduler")


def deepspeed_config(path: str | Path, micro_batch: int, grad_accum: int, sp: int) -> dict:
    """The DeepSpeed JSON at `path` completed with the batch sizes of the run."""
    try:
        ds = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read DeepSpeed config {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    clash = [k for k in _OWNED_BY_RUN_CONFIG if k in ds]
    if clash:
        raise ConfigError(f"{path}: {', '.join(clash)} must not be set here: the run config's train and "
                          "optim sections own batch sizes and the optimizer")
    zero = ds.get("zero_optimization", {})
    if zero.get("stage", 0) == 3 and sp > 1 and zero.get("reduce_scatter", True):
        # ZeRO-3's reduce-scatter path divides gradients by dp × sp instead of dp (DeepSpeed
        # 0.19), losing the sum over the sequence-parallel ranks; its all-reduce path does not.
        raise ConfigError(f"{path}: zero_optimization.reduce_scatter must be false for ZeRO stage 3 with "
                          f"sp = {sp} > 1")
    # Our optimizers are plain torch ones (elementwise), which ZeRO partitions correctly.
    return {**ds, "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_accum,
            "zero_allow_untested_optimizer": True}


def lr_factor(optim: OptimSection, total_steps: int):
    """Multiplier of the base lr after `step` optimizer steps: linear warmup, then the schedule."""

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape

    return factor


def build_optimizer(params, optim: OptimSection, cpu_offload: bool) -> torch.optim.Optimizer:
    if cpu_offload:
        if optim.name == "sgd":
            raise ConfigError("optimizer CPU offload runs DeepSpeed's CPU Adam: optim.name must be adam or adamw")
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                                adamw_mode=optim.name == "adamw")
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
    # fused: one kernel over all tensors instead of ~10 ops per parameter tensor (CPU and CUDA; at ZeRO 0 the small
    # models' hundreds of tensors made the for-loop Adam ~20% of an n-body step)
    return cls(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, fused=True)


def micro_batch_size(cfg: TrainConfig, dp: int) -> int:
    per_step = dp * cfg.train.grad_accum
    if cfg.train.batch_size % per_step:
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size} is not divisible by dp ({dp}) × "
                          f"train.grad_accum ({cfg.train.grad_accum})")
    return cfg.train.batch_size // per_step


def zero_stage(cfg: TrainConfig, mesh: Mesh) -> int:
    return deepspeed_config(cfg.train.deepspeed, 1, 1, mesh.sp).get("zero_optimization", {}).get("stage", 0)


def build_engine(cfg: TrainConfig, model_cfg, mesh: Mesh, load_universal: bool = False):
    """-> (DeepSpeed engine, MeshMPU). Collective: every rank calls it. `load_universal`: the engine loads
    DeepSpeed universal checkpoints (a checkpoint resharded for this layout, `dist_hyena.train.checkpoint`)."""
    mpu = MeshMPU(mesh.dp_group, mesh.sp_group)
    ds = deepspeed_config(cfg.train.deepspeed, micro_batch_size(cfg, mesh.dp), cfg.train.grad_accum, mesh.sp)
    if load_universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    torch.manual_seed(cfg.run.seed)  # the same initial parameters on every rank and every run
    zero = ds.get("zero_optimization", {})
    if zero.get("stage", 0) == 3:
        # Partition parameters over all dp × sp ranks, as ZeRO-3 reduces gradients over them;
        # left to itself DeepSpeed would partition over the mpu's dp group only.
        with deepspeed.zero.Init(data_parallel_group=mpu.get_sequence_data_parallel_group(),
                                 config_dict_or_path=ds):
            model = build_model(model_cfg, mesh=mesh if mesh.sp > 1 else None)
    else:
        model = build_model(model_cfg, mesh=mesh if mesh.sp > 1 else None)
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    optimizer = build_optimizer(model.parameters(), cfg.optim, offload)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.optim, cfg.train.steps))
    try:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds,
                                               mpu=mpu)
    except ValueError as e:  # DeepSpeed validates its config with pydantic (ValidationError is a ValueError)
        raise ConfigError(f"{cfg.train.deepspeed}: DeepSpeed rejects this config: {e}") from None
    return engine, mpu


def forward_batch(engine, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (prediction in float32, inputs "x", targets "y") of this rank's token block on the engine's device."""
    dtype = next(engine.module.parameters()).dtype
    x, f, y = (batch[k].to(engine.device) for k in ("x", "f", "y"))
    pred, _ = engine(x.to(dtype), f.to(dtype))
    return pred.float(), x, y


def batch_error(engine, batch: dict, task, n_tokens: int, sp: int) -> tuple[torch.Tensor, float, int]:
    """-> (this rank's weighted sum of squared errors, its weighted element count, the element
    count of its sp group's whole micro-batch). The loss to backpropagate is sse / group count.

    `batch` holds this rank's token block (inputs and targets as `dist_hyena.tasks` describes);
    `task` is its `dist_hyena.tasks` object.
    """
    pred, _, y = forward_batch(engine, batch)
    return task.squared_error(pred, y, n_tokens, sp)


def all_reduce_sum(values: list[float | torch.Tensor], device) -> list[float]:
    """Sums over all ranks, in float64."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()
