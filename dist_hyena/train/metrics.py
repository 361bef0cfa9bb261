"""Observability on rank 0: progress bar, TensorBoard, `metrics.jsonl`, loss-curve PNG.

`metrics.jsonl` holds one JSON object per logged step: training records carry `step`,
`loss` (the mean over the steps since the previous record), `lr`, `tokens` (read by all ranks since the previous
record), `tokens_per_s`, `mem_gb`;
validation records carry `step` and `val_mse` (recall also `val_accuracy`; with `eval.test`, a new best
validation also carries the test split's `test_mse` / `test_accuracy`); a step skipped for a non-finite loss
(`train.nonfinite: skip`) carries `skipped_nonfinite: 1`.
With `log.sample_ids`, `samples.jsonl` holds one object per step: `step` and `sample_ids`, the global sample ids
of each of its micro-batches (data-parallel ranks' shares in rank order): which samples a step trained on.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch
from tqdm import tqdm


def memory_gb() -> float:
    """Peak accelerator memory of this process, or its peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _keep_until(path: Path, step: int) -> None:
    """Rewrite a JSON-lines log with only its records of steps <= `step` (a resume drops what came after)."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class MetricsLogger:
    """Writes metrics on the main rank; a no-op elsewhere. `start_step` > 0 (a resume) drops
    records of later steps left by the interrupted run, so the file reads as one run."""

    def __init__(self, run_dir: Path, main: bool, total_steps: int, start_step: int = 0):
        self.main = main
        self.jsonl, self.samples_jsonl = run_dir / "metrics.jsonl", run_dir / "samples.jsonl"
        if not main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _keep_until(self.jsonl, start_step)
        if self.samples_jsonl.exists():
            _keep_until(self.samples_jsonl, start_step)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=run_dir.name, unit="step",
                        file=sys.stderr, dynamic_ncols=True, mininterval=1.0)

    def step(self, step: int, loss: float) -> None:
        if self.main:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def log(self, step: int, **values: float) -> None:
        if not self.main:
            return
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        shown = {k: f"{v:.4g}" for k, v in values.items() if k != "lr"}
        self.bar.set_postfix(shown, refresh=True)

    def samples(self, step: int, sample_ids: list[list[int]]) -> None:
        if self.main:
            with self.samples_jsonl.open("a") as fh:
                fh.write(json.dumps({"step": step, "sample_ids": sample_ids}) + "\n")

    def close(self) -> None:
        if self.main:
            self.bar.close()
            self.writer.close()


def plot_loss_curve(jsonl: str | Path, out: str | Path) -> Path:
    """Training loss (and validation MSE where logged, with the references a next-frame task logs beside it:
    static, constant velocity) against step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(jsonl)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_mse"]) for r in records if "val_mse" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (MSE)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation MSE")
    off_scale = []  # a reference far above the model (x + Δt v over a long Δt) would flatten the curves
    for key, label in (("val_static_mse", "validation: static x_t"),
                       ("val_constant_velocity_mse", "validation: x_t + Δt v_t")):
        ref = [(r["step"], r[key]) for r in records if key in r]
        if ref and val and min(v for _, v in ref) > 10 * max(v for _, v in val):
            off_scale.append(f"{label.split(': ')[1]} = {ref[-1][1]:.3g} (off scale)")
        elif ref:
            ax.plot(*zip(*ref, strict=True), "--", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean squared error")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("\n".join([Path(jsonl).parent.name, *off_scale]), fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
