import pytest

from tests.helpers.slurm import slurm_cluster


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """One real SLURM cluster (munged + slurmctld + slurmd) shared by the launch tests."""
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
