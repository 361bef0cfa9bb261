"""Soak: a run SIGKILLed again and again — once while a checkpoint is being written, then at
random points — and resumed each time, ends with the parameters of an uninterrupted run,
bitwise. After every kill, `--resume` picks the checkpoint `latest` named when the process
died (never a `.partial` one) and continues from its step.

One process per job (world of one) keeps each cycle short; the kill is a real SIGKILL.
"""

import os
import random
import signal
import sys
import time

import pytest
import torch

from dist_hyena.train.checkpoint import complete_tags
from dist_hyena.train.metrics import read_metrics
from tests.helpers.launch import REPO_ROOT, finish, start
from tests.helpers.training import small_run_overrides

TRAIN = str(REPO_ROOT / "launch" / "train.py")
STEPS, KILLS, SEED = 8, 2, 2026


def _latest_step(root) -> int:
    latest = root / "latest"
    return int(latest.read_text().removeprefix("step_")) if latest.exists() else 0


def _kill_mid_checkpoint(proc, root, timeout: float = 240) -> bool:
    """SIGKILL as soon as a `<tag>.partial` directory appears beside a complete checkpoint; ->
    whether it was still there after the kill (the process died mid-write), not renamed in between."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if (root / "latest").exists() and any(p.name.endswith(".partial") for p in root.iterdir()):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return any(p.name.endswith(".partial") for p in root.iterdir())
        time.sleep(0.002)
    return False


def _kill_after_progress(proc, run_dir, after_step: int, rng: random.Random, timeout: float = 240) -> None:
    """SIGKILL at a random moment once this job has checkpointed a step beyond `after_step`."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _latest_step(run_dir / "checkpoints") > after_step:
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()


@pytest.mark.timeout(420)
def test_random_kills_and_resumes_end_with_the_uninterrupted_parameters(tmp_path):
    run = small_run_overrides(tmp_path, "x") + [f"train.steps={STEPS}", "checkpoint.every=1", "checkpoint.keep=2"]
    finish(start([sys.executable, TRAIN, *run, "run.name=straight"]), timeout=240)
    run_dir = tmp_path / "runs" / "soak"
    root = run_dir / "checkpoints"
    rng = random.Random(SEED)
    mid_write, kills = 0, 0
    while True:
        before = _latest_step(root)
        expected = f"resumed from {(root / 'latest').read_text()}" if before else "from scratch"
        proc = start([sys.executable, TRAIN, "--resume", *run, "run.name=soak"])
        if kills < KILLS:
            if kills == 0 or not mid_write:
                mid_write += _kill_mid_checkpoint(proc, root)
            else:
                _kill_after_progress(proc, run_dir, before, rng)
        out = finish(proc, timeout=240) if proc.returncode is None else proc.stdout.read()
        assert f"run soak: world 1 = dp 1 x sp 1, nbody 8 tokens/sample, {expected}" in out, out[-3000:]
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, out[-3000:]
        kills += 1
        # What a resume will pick: the newest complete tag, which `latest` names; never a .partial.
        tags, latest = complete_tags(root), root / "latest"
        assert (tags[-1] if tags else None) == (latest.read_text() if latest.exists() else None), (
            sorted(p.name for p in root.iterdir()))
        assert _latest_step(root) >= before, "a kill lost a complete checkpoint"
        assert kills <= KILLS + 3, "no progress: the run keeps dying"
    assert mid_write >= 1, "no kill landed while a checkpoint was being written"
    assert kills >= KILLS
    assert "resumed from step_" in out  # the last job continued, it did not start over
    a = torch.load(tmp_path / "runs" / "straight" / "model.pt")["state_dict"]
    b = torch.load(run_dir / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "parameters differ after the kills"
    losses = {name: {r["step"]: r["loss"] for r in read_metrics(tmp_path / "runs" / name / "metrics.jsonl")
                     if "loss" in r} for name in ("straight", "soak")}
    assert losses["soak"] == losses["straight"]
