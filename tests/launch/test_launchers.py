"""init_distributed under the multi-node launch modes (deepspeed, accelerate, mpiexec), simulated
on one machine.

Each test starts tests/launch/allreduce_probe.py through a launcher, as docs/launching.md
tells a user to, and checks that both ranks found each other with the ranks and local
ranks that mode implies. The one-node launchers run real training instead: torchrun,
accelerate and mpiexec in test_train_launchers.py, srun in test_slurm_train.py, deepspeed in
tests/train/test_launch_deepspeed.py.
"""

import socket
import sys
from pathlib import Path

import pytest

from tests.helpers.launch import (
    PROBE,
    REPO_ROOT,
    finish,
    free_port,
    mpiexec_args,
    probe_reports,
    run_launcher,
    start,
)

pytestmark = pytest.mark.timeout(240)


def _local_ranks(reports):
    return [r["local_rank"] for r in reports]


def test_deepspeed_hostfile(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    port = free_port()
    # A hostfile makes DeepSpeed probe its hosts over ssh; one local host needs neither ssh nor a lookup.
    run_launcher(["deepspeed", "--hostfile", str(hostfile), "--no_ssh_check", "--master_addr", "127.0.0.1",
                  "--master_port", str(port), PROBE, str(tmp_path)], timeout=180)
    assert _local_ranks(probe_reports(tmp_path, world=2)) == [0, 1]
    # DeepSpeed's CPU all-reduce gives each rank a 67 MB shared-memory segment; none may outlive the job.
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def test_deepspeed_two_nodes_without_ssh(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(free_port())
    # Two launcher invocations stand for the two nodes, as `--no_ssh` runs on a real cluster.
    nodes = [start(["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(n),
                    "--master_addr", "127.0.0.1", "--master_port", port, PROBE, str(tmp_path)])
             for n in range(2)]
    for node in nodes:
        finish(node, timeout=180)
    assert _local_ranks(probe_reports(tmp_path, world=2)) == [0, 0]


def test_accelerate_launch_two_machines(tmp_path):
    config = REPO_ROOT / "configs" / "accelerate" / "two_nodes.yaml"
    port = str(free_port())
    # One rank per simulated machine: the config's 16 ranks overridden to 2 for this host's cores.
    machines = [start(["accelerate", "launch", "--config_file", str(config), "--num_processes", "2",
                       "--machine_rank", str(m), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                       PROBE, str(tmp_path)])
                for m in range(2)]
    for machine in machines:
        finish(machine, timeout=180)
    assert _local_ranks(probe_reports(tmp_path, world=2)) == [0, 0]


def test_mpiexec_across_nodes_finds_rank0_over_mpi(tmp_path):
    # Each rank claims to be alone on its node, as on a real multi-node run: with no
    # MASTER_ADDR, rank 0's host name must come over MPI (mpi4py), not be assumed local.
    run_launcher([*mpiexec_args(2), "env", "OMPI_COMM_WORLD_LOCAL_SIZE=1", sys.executable, PROBE, str(tmp_path)],
                 timeout=180)
    reports = probe_reports(tmp_path, world=2)
    assert {(r["launcher"], r["master_addr"]) for r in reports} == {("openmpi", socket.gethostname())}
