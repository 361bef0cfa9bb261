"""Real signals to real training ranks (two gloo ranks of launch/train.py).

- SIGKILL of one rank mid-run: the surviving rank exits non-zero on its own within a bounded
  time (no hang), and the `deepspeed` launcher names the rank that died.
- SIGTERM (SLURM's time limit and preemption) to ONE rank: every rank writes the checkpoint
  of the step in progress and exits with 143; resuming gives the loss sequence and the final
  parameters of an uninterrupted run, bitwise.
"""

import os
import re
import signal
import sys
import time

import psutil
import pytest
import torch

from dist_hyena.train.metrics import read_metrics
from tests.helpers.launch import REPO_ROOT, finish, free_port, start, start_ranks
from tests.helpers.training import small_run_overrides

TRAIN = str(REPO_ROOT / "launch" / "train.py")
TIMEOUT_S = 20  # parallel.timeout_s: the bound on any collective whose peer is gone


def _wait_for_step(run_dir, step: int, procs, timeout: float = 240) -> None:
    """Until rank 0 has logged `step` (fails if a rank exits first)."""
    deadline = time.monotonic() + timeout
    while not any(r.get("step", 0) >= step and "loss" in r for r in read_metrics(run_dir / "metrics.jsonl")):
        for p in procs:
            if p.poll() is not None:
                tail = p.stdout.read()[-3000:]
                raise AssertionError(f"a rank exited with {p.returncode} before step {step}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"step {step} not reached in {timeout} s")
        time.sleep(0.05)


def _communicate(proc, timeout: float) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


@pytest.mark.timeout(300)
def test_sigkill_of_one_rank_ends_the_other_within_the_timeout(tmp_path):
    run = small_run_overrides(tmp_path, "killed") + ["train.steps=1000", f"parallel.timeout_s={TIMEOUT_S}"]
    ranks = start_ranks([sys.executable, TRAIN, *run], world=2)
    try:
        _wait_for_step(tmp_path / "runs" / "killed", 2, ranks)
        os.kill(ranks[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        out = _communicate(ranks[0], timeout=TIMEOUT_S + 60)
        elapsed = time.monotonic() - killed_at
    finally:
        for p in ranks:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert ranks[1].returncode == -signal.SIGKILL
    assert ranks[0].returncode not in (0, None), out[-3000:]
    assert elapsed < TIMEOUT_S + 30, f"the surviving rank took {elapsed:.0f} s to exit"
    assert "Traceback" in out and ("Connection" in out or "timed out" in out.lower()), out[-3000:]


@pytest.mark.timeout(300)
def test_deepspeed_launcher_names_the_killed_rank(tmp_path):
    run = small_run_overrides(tmp_path, "killed") + ["train.steps=1000", f"parallel.timeout_s={TIMEOUT_S}"]
    launcher = start(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN, *run])
    try:
        deadline = time.monotonic() + 240
        while not any("loss" in r for r in read_metrics(tmp_path / "runs" / "killed" / "metrics.jsonl")):
            assert launcher.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        rank1 = next(c for c in psutil.Process(launcher.pid).children(recursive=True)
                     if "--local_rank=1" in c.cmdline())
        rank1.send_signal(signal.SIGKILL)
        out = _communicate(launcher, timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode != 0
    # The launcher's last line is the failed rank's command line and its exit status.
    assert re.search(r"'--local_rank=1'[^\n]*\] exits with return code = -9", out), out[-3000:]


def _final_parameters(run_dir) -> dict:
    return torch.load(run_dir / "model.pt")["state_dict"]


@pytest.mark.timeout(400)
def test_sigterm_writes_a_checkpoint_and_resume_is_exact(tmp_path):
    steps = 12
    run = small_run_overrides(tmp_path, "x") + [f"train.steps={steps}", f"parallel.timeout_s={TIMEOUT_S}"]
    runs = tmp_path / "runs"
    # The uninterrupted reference trains beside the job that gets the signal. It starts first and makes the
    # store both read: a second job started at once would find the store half-written and refuse it.
    reference = start_ranks([sys.executable, TRAIN, *run, "run.name=straight"], world=2)
    ranks = []
    try:
        _wait_for_step(runs / "straight", 1, reference)
        ranks = start_ranks([sys.executable, TRAIN, *run, "run.name=resumed"], world=2)
        _wait_for_step(runs / "resumed", 2, ranks)
        os.kill(ranks[1].pid, signal.SIGTERM)  # one rank only: the others learn of it in the next all-reduce
        outs = [_communicate(p, timeout=120) for p in ranks]
        for p in reference:
            finish(p, timeout=240)
    finally:
        for p in ranks + reference:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in ranks] == [143, 143], outs[0][-3000:]
    stopped = int((runs / "resumed" / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert 2 <= stopped < steps, f"stopped at step {stopped}"
    assert f"SIGTERM: stopped after step {stopped} with checkpoint step_{stopped:08d}" in outs[0]

    resumed = start_ranks([sys.executable, TRAIN, "--resume", *run, "run.name=resumed"], world=2)
    out = [finish(p, timeout=240) for p in resumed][0]
    assert f"resumed from step_{stopped:08d}" in out

    def losses(name):
        return {r["step"]: r["loss"] for r in read_metrics(runs / name / "metrics.jsonl") if "loss" in r}

    assert losses("resumed") == losses("straight") and sorted(losses("straight")) == list(range(1, steps + 1))
    a, b = _final_parameters(runs / "straight"), _final_parameters(runs / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
