"""launch/slurm/train.sbatch on a real SLURM cluster: two srun ranks train, get requeued, and the requeued job
resumes on a smaller allocation (one rank, as after a preemption the next allocation may have fewer nodes):
DeepSpeed's universal checkpoint reshards the dp = 2 checkpoint (docs/design.md §5)."""

import json
import time

import pytest

from tests.helpers.launch import REPO_ROOT, assert_trained

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("slurm")]  # one cluster

# The signal goes out once step 10's checkpoint is complete; 40 more steps keep the job
# training (not already exporting) when it lands, and few checkpoints keep the test quick.
STEPS, EVERY = 50, 10


def test_train_sbatch_requeues_on_usr1_and_resumes(tmp_path, slurm, train_args):
    run_dir, log = tmp_path / "runs" / "tiny", tmp_path / "train.out"
    job = slurm.sbatch(["--ntasks", "2", "--output", str(log), "launch/slurm/train.sbatch",
                        *train_args, f"train.steps={STEPS}", f"checkpoint.every={EVERY}"],
                       cwd=REPO_ROOT)
    slurm.wait(job, timeout=120, until=("RUNNING",))

    first_checkpoint = run_dir / "checkpoints" / f"step_{EVERY:08d}"
    deadline = time.monotonic() + 180
    while not first_checkpoint.is_dir():
        assert slurm.state(job) == "RUNNING", f"job ended before its first checkpoint:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint after 180 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    # What SLURM sends the batch shell before the time limit (#SBATCH --signal=B:USR1@180).
    slurm.run(["scancel", "--signal=USR1", "--batch", job])
    slurm.wait(job, timeout=60, until=("PENDING",))
    slurm.run(["scontrol", "update", f"JobId={job}", "NumTasks=1", "NumCPUs=1"])  # the next allocation is smaller
    slurm.start_now(job)
    state = slurm.wait(job, timeout=240)

    text = log.read_text()
    assert state == "COMPLETED", f"{state}\n{text[-3000:]}\n{slurm.logs()}"
    assert f"requeueing job {job}" in text
    assert "restart 1): 1 ranks" in text
    assert text.count("world 2 =") == 1 and text.count("world 1 =") == 1, text[-3000:]
    assert "on another layout: saved at dp 2 x sp 1, ZeRO-1, now dp 1 x sp 1, ZeRO-1" in text, text[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert EVERY <= summary["start_step"] < STEPS
    assert_trained(run_dir, STEPS, start_step=summary["start_step"])
