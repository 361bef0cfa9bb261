"""launch/slurm/preprocess.sbatch on a real SLURM cluster: two MPI ranks write one valid store."""

import subprocess
import sys

import pytest

from tests.helpers.launch import REPO_ROOT, launch_env

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("slurm")]  # one cluster


def test_preprocess_sbatch_writes_a_store_that_verifies(tmp_path, slurm):
    store = tmp_path / "nbody5"
    log = tmp_path / "preprocess.out"
    # Four chunks of two samples so that both ranks get work; short trajectories keep it quick.
    job = slurm.sbatch(["--ntasks", "2", "--output", str(log), "launch/slurm/preprocess.sbatch", "nbody",
                        "--preset", "nbody5", "--out", str(store), "--seed", "3", "--train", "4", "--val", "2",
                        "--test", "2", "--samples-per-chunk", "2", "--record-steps", "0", "50"],
                       cwd=REPO_ROOT)
    state = slurm.wait(job, timeout=180)
    text = log.read_text()
    assert state == "COMPLETED", f"{state}\n{text[-3000:]}\n{slurm.logs()}"
    assert f"job {job}: 2 ranks" in text
    assert f"{store}: complete" in text
    verify = subprocess.run([sys.executable, "datasets/nbody.py", "--out", str(store), "--verify"], cwd=REPO_ROOT,
                            env=launch_env(), capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and f"{store}: OK" in verify.stdout, verify.stdout + verify.stderr


def test_preprocess_sbatch_names_an_unknown_generator(tmp_path, slurm):
    log = tmp_path / "preprocess.out"
    job = slurm.sbatch(["--ntasks", "1", "--output", str(log), "launch/slurm/preprocess.sbatch", "nbodyy",
                        "--out", str(tmp_path / "x")], cwd=REPO_ROOT)
    assert slurm.wait(job, timeout=60) == "FAILED"
    assert "datasets/nbodyy.py" in log.read_text()
    assert not (tmp_path / "x").exists()
