"""Run a real launcher (deepspeed, torchrun, accelerate, mpiexec, sbatch) as a subprocess.

    result = run_launcher(["torchrun", "--nproc_per_node", "2", PROBE, str(tmp_path)], timeout=120)

The child gets ``PYTHONPATH=<repo root>`` (the package is not installed) and a clean set of
rank variables, so a launcher test never inherits the rank of the pytest process that
started it. A non-zero exit or a run past ``timeout`` fails with the command's output tail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from dist_hyena.runtime import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = str(REPO_ROOT / "tests" / "launch" / "allreduce_probe.py")
TRAIN = str(REPO_ROOT / "launch" / "train.py")

# Variables through which a launcher hands out ranks; a test's child must start without them.
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_RANK_PREFIXES = ("OMPI_", "PMI_", "PMIX_", "SLURM_")


def launch_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without rank variables, plus PYTHONPATH=repo root, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARS and not k.startswith(_RANK_PREFIXES)}
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["OMP_NUM_THREADS"] = "1"  # ranks share the machine's two cores
    env.update(extra or {})
    return env


def mpiexec_args(n: int) -> list[str]:
    """``mpiexec -n N``, plus the flags Open MPI demands when running as root."""
    root = ["--allow-run-as-root", "--oversubscribe"] if os.geteuid() == 0 else []
    return ["mpiexec", *root, "-n", str(n)]


def start(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """Start a launcher in its own process group, so :func:`finish` can stop all its ranks."""
    return subprocess.Popen(
        cmd, cwd=cwd, env=env or launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )


def start_ranks(cmd: list[str], world: int, extra: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start ``cmd`` as ranks 0..world-1 of one job on this machine, each in its own process group,
    with the variables a torch launcher would set: a fault test signals one rank, not a launcher."""
    port = str(free_port())
    return [start(cmd, launch_env({"RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **(extra or {})}))
            for r in range(world)]


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a started launcher; kill its whole process group and fail if it overruns or fails."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{proc.args} ran past {timeout:.0f} s; output tail:\n{out[-4000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"{proc.args} exited with {proc.returncode}; output tail:\n{out[-4000:]}")
    return out


def run_launcher(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a launcher to completion; return its combined output."""
    return finish(start(cmd, env), timeout)


def probe_reports(out_dir: Path, world: int) -> list[dict]:
    """The per-rank reports allreduce_probe.py wrote, checked to form one world of ``world`` ranks."""
    reports = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]
    for r, rep in enumerate(reports):
        assert (rep["rank"], rep["dist_rank"]) == (r, r), rep
        assert rep["world_size"] == rep["dist_world_size"] == world, rep
        assert rep["sum"] == world * (world + 1) / 2, rep
    return reports


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss, from the run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def assert_trained(run_dir: Path, steps: int, start_step: int = 0) -> dict[int, float]:
    """The run logged every step 1..steps, its loss fell, and its final checkpoint is complete."""
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, steps + 1)), losses
    assert losses[steps] < 0.5 * losses[1], f"loss did not fall: {losses}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["start_step"], summary["steps"]) == (start_step, steps), summary
    assert (run_dir / "checkpoints" / f"step_{steps:08d}").is_dir()
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{steps:08d}"
    return losses
