import subprocess
import sys

import pytest

from tests.helpers.launch import REPO_ROOT, launch_env
from tests.helpers.slurm import slurm_cluster
from tests.helpers.training import small_run_overrides


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """One real SLURM cluster (munged + slurmctld + slurmd) shared by the launch tests."""
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """The 8-body store of tests/helpers/training.py, made once for every launcher's training run."""
    path = tmp_path_factory.mktemp("data") / "manybody8"
    subprocess.run([sys.executable, "datasets/nbody.py", "--preset", "manybody", "--n-bodies", "8", "--out", str(path),
                    "--train", "32", "--val", "8", "--test", "8", "--no-progress"],
                   cwd=REPO_ROOT, env=launch_env(), check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture
def train_args(tmp_path, store):
    """launch/train.py arguments: the small run of tests/helpers/training.py writing to
    tmp_path/runs/tiny, on the session's store (data.preset empty: never regenerated)."""
    return [*small_run_overrides(tmp_path, "tiny"), f"data.path={store}", "data.preset="]
