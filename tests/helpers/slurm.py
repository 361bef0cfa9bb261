"""A real one-node SLURM cluster in a scratch folder, for tests of the batch scripts.

    with slurm_cluster(tmp_dir) as cluster:
        job = cluster.sbatch(["launch/slurm/train.sbatch", ...], ntasks=2)
        state = cluster.wait(job, timeout=300)

Installs nothing: ``munged``, ``slurmctld``, ``slurmd`` and the client commands must be on
the machine (Debian: ``apt-get install -y slurmctld slurmd slurm-client munge``); without
them the test fails naming what is missing. Everything the daemons write (munge key and
socket, slurm.conf, state, spool, logs, pid files) lives in the scratch folder, the ports
are free ones, and the daemons are stopped by their pids when the block ends.
Needs root (slurmd starts job steps as the submitting user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.launch import free_port, launch_env

_DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "srun", "sinfo", "scontrol", "sacct")
_FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
             "BOOT_FAIL", "DEADLINE")
_APT = "apt-get install -y slurmctld slurmd slurm-client munge"


def _which(name: str) -> str | None:
    # The daemons live in sbin, which a non-login PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def missing_binaries() -> list[str]:
    return [name for name in _DAEMONS + _CLIENTS if _which(name) is None]


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands and jobs: this cluster's conf, the repo on PYTHONPATH."""
        return launch_env({"SLURM_CONF": str(self.conf)})

    def run(self, args: list[str], timeout: float = 30, cwd: Path | None = None) -> str:
        proc = subprocess.run(args, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{args} exited with {proc.returncode}: {proc.stderr.strip()}\n{self.logs()}")
        return proc.stdout

    def sbatch(self, args: list[str], cwd: Path) -> str:
        """Submit ``sbatch [options] script [script args]`` from ``cwd``; return the job id."""
        return self.run(["sbatch", "--parsable", *args], cwd=cwd).strip().split(";")[0]

    def state(self, job: str) -> str:
        """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...), from the controller."""
        out = self.run(["scontrol", "show", "job", job, "--oneliner"])
        field = next(f for f in out.split() if f.startswith("JobState="))
        return field.split("=", 1)[1]

    def wait(self, job: str, timeout: float) -> str:
        """Wait until the job leaves the queue; return its final state (cancel it on timeout)."""
        deadline = time.monotonic() + timeout
        while (state := self.state(job)) not in _FINISHED:
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job], env=self.env, timeout=30)
                raise AssertionError(f"job {job} still {state} after {timeout:.0f} s\n{self.logs()}")
            time.sleep(1)
        return state

    def logs(self) -> str:
        tails = []
        for log in sorted(self.root.glob("*.log")):
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)


def _write_conf(root: Path, node: str, munge_socket: Path) -> Path:
    mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=dist_hyena_test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
MpiDefault=none
ReturnToService=2
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={int(mem_mib * 0.9)} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _stop(pid_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)  # raises ProcessLookupError once it is gone
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def slurm_cluster(root: Path, start_timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``root``; yield the cluster once its node is idle."""
    missing = missing_binaries()
    if missing:
        raise AssertionError(f"SLURM test cluster needs {', '.join(missing)} on PATH; install with `{_APT}`")
    if os.geteuid() != 0:
        raise AssertionError("the SLURM test cluster runs its daemons as root; run the tests as root")

    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged wants its socket folder searchable by all, writable by its owner only
    node = socket.gethostname().split(".")[0]
    key, sock = root / "munge.key", root / "munge.socket"
    subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
    conf = _write_conf(root, node, sock)
    cluster = SlurmCluster(root, conf, node)
    pid_files = [root / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]
    try:
        subprocess.run([_which("munged"), "--force", f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={pid_files[0]}", f"--log-file={root / 'munged.log'}",
                        f"--seed-file={root / 'munged.seed'}"], check=True, capture_output=True)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_which(daemon), "-f", str(conf)], check=True, capture_output=True, env=cluster.env)
        deadline = time.monotonic() + start_timeout
        while cluster.run(["sinfo", "-h", "-n", node, "-o", "%t"]).strip() != "idle":
            if time.monotonic() > deadline:
                raise AssertionError(f"SLURM node {node} not idle after {start_timeout:.0f} s\n{cluster.logs()}")
            time.sleep(0.5)
        yield cluster
    finally:
        for pid_file in reversed(pid_files):
            _stop(pid_file)
