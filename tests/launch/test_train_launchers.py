"""launch/train.py through real launchers: falling loss, checkpoints, resume.

Each run is the small run of tests/helpers/training.py on two gloo ranks. The launcher must
have made ONE world of two ranks: two worlds of one would also train, each on its own.
(`deepspeed` on one node: tests/train/test_launch_deepspeed.py.)
"""

import sys

import pytest

from tests.helpers.launch import REPO_ROOT, TRAIN, assert_trained, free_port, mpiexec_args, run_launcher

pytestmark = pytest.mark.timeout(300)


def test_torchrun_trains_and_accelerate_resumes(tmp_path, train_args):
    run_dir = tmp_path / "runs" / "tiny"
    run = [*train_args, "train.steps=8"]
    out = run_launcher(["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), TRAIN,
                        *run, "train.stop_at=4"], timeout=240)
    assert "world 2 = dp 2" in out
    first = assert_trained(run_dir, steps=4)

    # The same run, continued under another launcher with the same world size.
    config = REPO_ROOT / "configs" / "accelerate" / "one_node.yaml"
    out = run_launcher(["accelerate", "launch", "--config_file", str(config), "--main_process_port",
                        str(free_port()), TRAIN, "--resume", *run], timeout=240)
    assert "world 2 = dp 2" in out and "resumed from step_00000004" in out
    losses = assert_trained(run_dir, steps=8, start_step=4)
    assert {s: losses[s] for s in first} == first  # steps 1-4 kept as the first job logged them


def test_mpiexec_trains(tmp_path, train_args):
    out = run_launcher([*mpiexec_args(2), sys.executable, TRAIN, *train_args, "train.steps=6"], timeout=240)
    assert "world 2 = dp 2" in out
    assert_trained(tmp_path / "runs" / "tiny", steps=6)
