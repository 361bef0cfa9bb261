"""launch_env_from: each launcher's environment read as rank, world, local rank, rendezvous."""

import pytest

from dist_hyena.runtime import LaunchEnv, gpu_index, launch_env_from


def _no_scontrol(nodelist):
    raise AssertionError(f"scontrol must not be needed here (nodelist {nodelist!r})")


def test_no_launcher_is_a_world_of_one():
    assert launch_env_from({}) == LaunchEnv("none", 0, 1, 0, "127.0.0.1", 0)


def test_torch_variables_from_deepspeed_torchrun_accelerate():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29501"}
    assert launch_env_from(env) == LaunchEnv("torch", 3, 8, 1, "node7", 29501)


def test_torch_variables_win_over_slurm_allocation():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "a", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "5",
           "SLURM_STEP_NODELIST": "b"}
    assert launch_env_from(env, _no_scontrol).launcher == "torch"
    assert launch_env_from(env, _no_scontrol).rank == 1


def test_torch_world_without_master_is_an_error():
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        launch_env_from({"RANK": "0", "WORLD_SIZE": "2"})


def _ompi(rank, local, size, local_size, **extra):
    return {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(local), "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size),
            "PMIX_NAMESPACE": "prterun-vm-4771@1", "PMIX_RANK": str(rank), **extra}


def test_openmpi_one_node_rendezvous_on_loopback_same_port_on_every_rank():
    envs = [launch_env_from(_ompi(r, r, 4, 4)) for r in range(4)]
    assert [e.rank for e in envs] == [0, 1, 2, 3]
    assert {(e.launcher, e.world_size, e.master_addr) for e in envs} == {("openmpi", 4, "127.0.0.1")}
    ports = {e.master_port for e in envs}
    assert len(ports) == 1 and 15000 <= ports.pop() < 30000
    other_job = launch_env_from(_ompi(0, 0, 4, 4, PMIX_NAMESPACE="prterun-vm-9999@1"))
    assert other_job.master_port != envs[0].master_port


def test_openmpi_multi_node_needs_master_addr_from_env_or_mpi():
    assert launch_env_from(_ompi(5, 1, 8, 4)).master_addr == ""  # init_distributed broadcasts it
    env = launch_env_from(_ompi(5, 1, 8, 4, MASTER_ADDR="n0", MASTER_PORT="2222"))
    assert (env.rank, env.local_rank, env.master_addr, env.master_port) == (5, 1, "n0", 2222)


def test_mpich_hydra_pmi():
    env = {"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "3",
           "PMI_KVSNAME": "kvs_1"}
    got = launch_env_from(env)
    assert (got.launcher, got.rank, got.world_size, got.local_rank) == ("pmi", 2, 3, 2)
    assert got.master_addr == "127.0.0.1"


def _srun(procid, localid, ntasks, nodelist="gpu[01-02]", job="123456", **extra):
    return {"SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), "SLURM_STEP_NUM_TASKS": str(ntasks),
            "SLURM_NTASKS": str(ntasks), "SLURM_STEP_NODELIST": nodelist, "SLURM_JOB_NODELIST": nodelist,
            "SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", **extra}


def test_srun_master_is_first_host_of_the_nodelist():
    seen = []

    def hostnames(nodelist):
        seen.append(nodelist)
        return ["gpu01", "gpu02"]

    envs = [launch_env_from(_srun(r, r % 4, 8), hostnames) for r in range(8)]
    assert seen == ["gpu[01-02]"] * 8
    assert [(e.rank, e.local_rank) for e in envs] == [(r, r % 4) for r in range(8)]
    assert {(e.launcher, e.world_size, e.master_addr, e.master_port) for e in envs} == {
        ("slurm", 8, "gpu01", envs[0].master_port)}
    assert launch_env_from(_srun(0, 0, 8, job="123457"), hostnames).master_port != envs[0].master_port


def test_srun_single_host_nodelist_needs_no_scontrol():
    assert launch_env_from(_srun(1, 1, 2, nodelist="vm"), _no_scontrol).master_addr == "vm"


def test_srun_master_env_overrides_nodelist():
    env = launch_env_from(_srun(0, 0, 2, MASTER_ADDR="10.0.0.1", MASTER_PORT="4000"), _no_scontrol)
    assert (env.master_addr, env.master_port) == ("10.0.0.1", 4000)


def test_sbatch_script_outside_srun_is_not_a_rank():
    # The batch script's own process sees the allocation's task count but is one process.
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "vm"}
    assert launch_env_from(env).world_size == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "two", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "RANK='two'"),
        ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "rank 2 outside world"),
        (_ompi(0, 0, 2, 2, MASTER_PORT="x"), "MASTER_PORT='x'"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        launch_env_from(env)


def test_gpu_of_a_rank():
    assert [gpu_index(r, visible=4) for r in range(4)] == [0, 1, 2, 3]
    assert gpu_index(3, visible=1) == 0  # srun --gpus-per-task=1: each rank sees only its own GPU
    with pytest.raises(RuntimeError, match="local rank 4 has no GPU: this process sees 4"):
        gpu_index(4, visible=4)


def test_cpu_threads_are_one_per_rank_unless_the_user_says():
    from dist_hyena.runtime import cpu_threads

    assert cpu_threads({}) == 1
    assert cpu_threads({"LOCAL_WORLD_SIZE": "2", "SLURM_TASKS_PER_NODE": "4(x2)"}) == 1
    assert cpu_threads({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "8"}) == 3
    assert cpu_threads({"OMP_NUM_THREADS": "0"}) == 1


def test_torchrun_inside_srun_one_local_rank_for_training_and_preprocessing(monkeypatch):
    """torchrun started inside an srun step: SLURM_LOCALID describes the srun task (0), LOCAL_RANK the torchrun
    worker (1). The torch variables win, and the data side (GPU choice of the simulators) reads the same."""
    from dist_hyena.data import nbody_task
    from dist_hyena.runtime import local_rank_from

    env = _srun(0, 0, 1, nodelist="gpu01", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="gpu01",
                MASTER_PORT="29500")
    assert launch_env_from(env).local_rank == local_rank_from(env) == 1
    assert nbody_task.local_rank_from is local_rank_from
    for case in (_srun(3, 1, 4), _ompi(5, 1, 8, 4), {"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "2"}, {}):
        assert local_rank_from(case) == launch_env_from(case, lambda nodelist: ["gpu01"]).local_rank
    monkeypatch.setattr(nbody_task.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(nbody_task.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(nbody_task.os, "environ", env)
    assert nbody_task._default_device() == "cuda:1"
