"""Process-group setup for whichever launcher started this process.

Every launcher announces rank and world size differently:

- ``deepspeed``, ``torchrun`` and ``accelerate launch`` set ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
- Open MPI's ``mpirun``/``mpiexec`` sets ``OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}``;
- MPICH / Intel MPI (Hydra) set ``PMI_RANK``, ``PMI_SIZE`` and ``MPI_LOCALRANKID``;
- SLURM's ``srun`` sets ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``,
  ``SLURM_STEP_NODELIST`` and ``SLURM_JOB_ID``;
- no launcher at all is a world of one.

:func:`launch_env_from` turns an environment into a :class:`LaunchEnv` (a pure function, so
it is unit-tested on plain dicts); :func:`init_distributed` exports that as the ``env://``
variables, picks NCCL + the local GPU or gloo + CPU, and initialises ``torch.distributed``
through DeepSpeed so DeepSpeed's communication layer sees the same group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# Ports derived from a job id fall in [_PORT_BASE, _PORT_BASE + _PORT_SPAN): below Linux's
# ephemeral range (32768+), so the OS never hands one of them to an outgoing connection.
_PORT_BASE = 15000
_PORT_SPAN = 15000

_TORCH_VARS = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as its launcher described it."""

    launcher: str  # "torch" (deepspeed/torchrun/accelerate), "openmpi", "pmi", "slurm" or "none"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


@dataclass(frozen=True)
class Runtime:
    """The initialised process group as the training code needs it."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "nccl" or "gloo"
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], key: str) -> int:
    value = env[key]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {key}={value!r} is not an integer") from None


def _derived_port(job_key: str) -> int:
    """A port every rank of one job computes identically (crc32: Python's hash() is salted per process)."""
    return _PORT_BASE + zlib.crc32(job_key.encode()) % _PORT_SPAN


def slurm_hostnames(nodelist: str) -> list[str]:
    """Expand a SLURM node list (``node[01-04],gpu7``) with ``scontrol show hostnames``."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True
        ).stdout
    except FileNotFoundError:
        raise RuntimeError(
            f"cannot expand SLURM node list {nodelist!r}: scontrol is not on PATH; "
            "set MASTER_ADDR to the first node's address instead"
        ) from None
    return out.split()


def launcher_of(env: Mapping[str, str]) -> str:
    """Whose variables describe this process: the torch ones win (torchrun inside an ``srun`` allocation is
    launched by torchrun), then Open MPI, then PMI, then ``srun``; "none" without any."""
    if all(k in env for k in _TORCH_VARS):
        return "torch"
    if "OMPI_COMM_WORLD_RANK" in env:
        return "openmpi"
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return "pmi"
    if "SLURM_STEP_NUM_TASKS" in env:
        return "slurm"
    return "none"


def local_rank_from(env: Mapping[str, str]) -> int:
    """This process's index among the ranks of its node, from the launcher :func:`launcher_of` picks (0 when
    that launcher does not say, or without one). The one reading of it: training and preprocessing agree."""
    keys = {"torch": ("LOCAL_RANK",), "openmpi": ("OMPI_COMM_WORLD_LOCAL_RANK",),
            "pmi": ("MPI_LOCALRANKID", "PMI_LOCAL_RANK"), "slurm": ("SLURM_LOCALID",), "none": ()}[launcher_of(env)]
    key = next((k for k in keys if k in env), None)
    return _int(env, key) if key else 0


def launch_env_from(
    env: Mapping[str, str], hostnames: Callable[[str], list[str]] = slurm_hostnames
) -> LaunchEnv:
    """Read rank, world size, local rank and rendezvous address from a launcher's environment.

    The torch variables win (torchrun inside an ``srun`` allocation is launched by torchrun),
    then Open MPI, then PMI, then ``srun``. ``MASTER_ADDR``/``MASTER_PORT``, when set, always
    override the derived rendezvous. Under MPI with ranks on several nodes and no
    ``MASTER_ADDR`` the address is returned empty: only a collective over MPI can find it
    (see :func:`init_distributed`).
    """
    addr = env.get("MASTER_ADDR", "")
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None
    launcher, local = launcher_of(env), local_rank_from(env)

    if launcher == "torch":
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        if world > 1 and (not addr or port is None):
            raise ValueError(
                f"RANK={rank} and WORLD_SIZE={world} are set but MASTER_ADDR/MASTER_PORT are not; "
                "the launcher must export both"
            )
    elif launcher == "openmpi":
        rank, world = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
        one_node = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") == world
        addr = addr or ("127.0.0.1" if one_node else "")
        port = port or _derived_port(env.get("PMIX_NAMESPACE") or env.get("OMPI_MCA_ess_base_jobid", "ompi"))
    elif launcher == "pmi":
        rank, world = _int(env, "PMI_RANK"), _int(env, "PMI_SIZE")
        one_node = "MPI_LOCALNRANKS" in env and _int(env, "MPI_LOCALNRANKS") == world
        addr = addr or ("127.0.0.1" if one_node else "")
        port = port or _derived_port(env.get("PMI_KVSNAME") or env.get("PMI_JOBID", "pmi"))
    elif launcher == "slurm":
        # SLURM_STEP_* exist only inside an srun step; the batch script itself (one process
        # holding the whole allocation's SLURM_NTASKS) must not count as a multi-rank world.
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_STEP_NUM_TASKS")
        if not addr:
            nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
            single_host = not any(c in nodelist for c in "[],")
            addr = nodelist if single_host else hostnames(nodelist)[0]
        port = port or _derived_port(f"{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}")
    else:
        rank, world = 0, 1
        addr = addr or "127.0.0.1"
        port = port or 0  # 0: init_distributed picks a free port (nobody else needs to find it)

    if not 0 <= rank < world:
        raise ValueError(f"{launcher} launcher gave rank {rank} outside world size {world}")
    return LaunchEnv(launcher, rank, world, local, addr, port)


def free_port() -> int:
    """A TCP port on the loopback interface that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mpi_master_addr(rank: int) -> str:
    """Rank 0's host name, broadcast over MPI (only for multi-node MPI jobs without MASTER_ADDR)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(
            "MPI ranks span several nodes and MASTER_ADDR is not set; export MASTER_ADDR "
            "(e.g. `mpiexec -x MASTER_ADDR=<first host> ...`) or install mpi4py"
        ) from None
    return MPI.COMM_WORLD.bcast(socket.gethostname() if rank == 0 else None, root=0)


def gpu_index(local_rank: int, visible: int) -> int:
    """The GPU of a rank: its local rank among the node's GPUs, or the only GPU it sees
    (launchers such as ``srun --gpus-per-task=1`` give each rank its own CUDA_VISIBLE_DEVICES)."""
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise RuntimeError(
            f"local rank {local_rank} has no GPU: this process sees {visible}; start at most one rank per GPU"
        )
    return local_rank


def cpu_threads(env: Mapping[str, str]) -> int:
    """Math threads for one CPU rank: ``OMP_NUM_THREADS`` when the user set it, else one. Measured
    (docs/threads.md, ``benchmarks/thread_policy.py``): a second thread speeds this model's steps up by nothing
    when the machine is quiet, and OpenMP threads waiting at barriers for a descheduled partner make a step 3-5x
    slower beside any other busy process; more cores are used by more ranks, not more threads."""
    if "OMP_NUM_THREADS" in env:
        return max(1, _int(env, "OMP_NUM_THREADS"))
    return 1


def apply_cpu_thread_policy() -> int:
    """Sets this process's torch math threads by :func:`cpu_threads` -> the count."""
    threads = cpu_threads(os.environ)
    torch.set_num_threads(threads)
    return threads


def init_distributed(timeout_s: float = 300.0) -> Runtime:
    """Initialise ``torch.distributed`` (through DeepSpeed) for the launcher that started us.

    ``timeout_s`` bounds the rendezvous and every collective, so a rank whose peer died
    raises instead of hanging. Calling it again in an initialised process returns the
    same :class:`Runtime` without touching the group.
    """
    import deepspeed  # deferred: importing it costs seconds and logs an accelerator probe

    launch = launch_env_from(os.environ)
    addr, port = launch.master_addr, launch.master_port
    if not addr:
        addr = _mpi_master_addr(launch.rank)
    if port == 0:
        port = free_port()

    on_gpu = torch.cuda.is_available()
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        device = torch.device("cuda", gpu_index(launch.local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        apply_cpu_thread_policy()

    if not dist.is_initialized():
        # The env:// variables are what DeepSpeed, torch and any library below us read.
        # DeepSpeed's engine takes LOCAL_RANK as its CUDA device index, so on GPUs it gets the
        # index chosen above (0 when the launcher already gave each rank a single GPU).
        os.environ.update(
            RANK=str(launch.rank),
            WORLD_SIZE=str(launch.world_size),
            LOCAL_RANK=str(device.index if on_gpu else launch.local_rank),
            MASTER_ADDR=addr,
            MASTER_PORT=str(port),
        )
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=timedelta(seconds=timeout_s),
            verbose=False,
        )
        if not on_gpu:
            _unlink_shm_segment(addr, port, launch.rank)
    return Runtime(launch.rank, launch.world_size, launch.local_rank, device, backend, launch.launcher)


def _unlink_shm_segment(addr: str, port: int, rank: int) -> None:
    """Remove the name of DeepSpeed's CPU all-reduce segment for this rank (67 MB of /dev/shm).

    DeepSpeed creates it when every rank is on one node and never unlinks it, so each job
    would leave its segments in the node's memory. Once every rank has mapped its peers'
    segments (the barrier), the name is no longer needed: the mappings live on until the
    processes exit, however they exit.
    """
    dist.barrier()
    Path("/dev/shm", f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}").unlink(missing_ok=True)


def shutdown() -> None:
    """Destroy the process group (a clean exit; no-op when none was created)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def on_rank0(work: Callable[[], object], describe: Callable[[Exception], str], error: type = RuntimeError) -> None:
    """Run `work` on rank 0 alone while the others wait; an exception there is raised on every rank, as `error`
    with the message `describe(exception)`, so no rank waits forever for one that failed. Collective."""
    message = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            work()
        except Exception as e:  # handed to every rank below
            message = describe(e)
    if dist.is_initialized():
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise error(message)
