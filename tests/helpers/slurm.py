"""A real one-node SLURM cluster in a scratch folder, for tests of the batch scripts.

    with slurm_cluster(tmp_dir) as cluster:
        job = cluster.sbatch(["--ntasks", "2", "launch/slurm/train.sbatch", ...], cwd=REPO_ROOT)
        state = cluster.wait(job, timeout=300)

Installs nothing: ``munged``, ``slurmctld``, ``slurmd`` and the client commands must be on
the machine (Debian: ``apt-get install -y slurmctld slurmd slurm-client munge``); without
them the test fails naming what is missing. Everything the daemons write (munge key and
socket, slurm.conf, state, spool, logs, pid files) lives in the scratch folder, the ports
are free ones. The daemons run in the foreground as children of the test process: stopped
by their pids when the block ends, and sent SIGTERM by the kernel if the test process dies
first (a CI timeout), so no cluster outlives its test run.
Needs root (slurmd starts job steps as the submitting user).
"""

from __future__ import annotations

import contextlib
import ctypes
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
_PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>


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

    def wait(self, job: str, timeout: float, until: tuple[str, ...] = _FINISHED) -> str:
        """Wait until the job is in one of ``until`` (default: any final state); return that state.
        A job still waiting at ``timeout`` is cancelled and fails the test."""
        deadline = time.monotonic() + timeout
        while (state := self.state(job)) not in until:
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job], env=self.env, timeout=30)
                raise AssertionError(f"job {job} still {state} after {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.5)
        return state

    def start_now(self, job: str) -> None:
        """Let a requeued job start at once instead of after SLURM's requeue delay (~2 minutes)."""
        self.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])

    def logs(self) -> str:
        tails = []
        for log in sorted([*self.root.glob("*.log"), *self.root.glob("*.out")]):
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


def _die_with_parent() -> None:
    """In the daemon's child process: SIGTERM it when the test process dies, so a killed test
    run (a CI timeout) leaves no cluster behind."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(daemon: subprocess.Popen) -> None:
    if daemon.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


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
    # In the foreground (-F, -D), as our children: stopped by their pids, and with the test process.
    commands = {
        "munged": [_which("munged"), "-F", "--force", f"--key-file={key}", f"--socket={sock}",
                   f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                   f"--seed-file={root / 'munged.seed'}"],
        "slurmctld": [_which("slurmctld"), "-D", "-f", str(conf)],
        "slurmd": [_which("slurmd"), "-D", "-f", str(conf)],
    }
    daemons: dict[str, subprocess.Popen] = {}
    try:
        deadline = time.monotonic() + start_timeout
        for name, cmd in commands.items():
            with open(root / f"{name}.out", "w") as out:
                daemons[name] = subprocess.Popen(cmd, env=cluster.env, stdout=out, stderr=subprocess.STDOUT,
                                                 preexec_fn=_die_with_parent)
            while name == "munged" and not sock.exists():  # slurmctld authenticates through it at start
                _check_alive(daemons, cluster, deadline)
                time.sleep(0.1)
        while _node_state(cluster) != "idle":
            _check_alive(daemons, cluster, deadline)
            time.sleep(0.5)
        yield cluster
    finally:
        for daemon in reversed(daemons.values()):
            _stop(daemon)


def _node_state(cluster: SlurmCluster) -> str:
    """The node's state per sinfo, or "" while the controller does not answer yet."""
    proc = subprocess.run(["sinfo", "-h", "-n", cluster.node, "-o", "%t"], env=cluster.env, capture_output=True,
                          text=True, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _check_alive(daemons: dict[str, subprocess.Popen], cluster: SlurmCluster, deadline: float) -> None:
    dead = [f"{name} (exit {d.returncode})" for name, d in daemons.items() if d.poll() is not None]
    if dead:
        raise AssertionError(f"SLURM test cluster: {', '.join(dead)} died at start\n{cluster.logs()}")
    if time.monotonic() > deadline:
        raise AssertionError(f"SLURM node {cluster.node} not idle in time\n{cluster.logs()}")
