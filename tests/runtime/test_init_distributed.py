"""init_distributed in real processes: no launcher, and a peer that never arrives."""

import subprocess
import sys
import time

from tests.helpers.launch import PROBE, finish, free_port, launch_env, probe_reports, start

# Rank 1 joins the group, then sleeps instead of entering the all-reduce rank 0 waits in.
_STRAGGLER = """
import sys, time, torch, torch.distributed as dist
from dist_hyena.runtime import init_distributed
rt = init_distributed(timeout_s=float(sys.argv[1]))
if rt.rank == 1:
    time.sleep(60)
else:
    dist.all_reduce(torch.ones(1))
"""


def test_plain_python_is_a_world_of_one(tmp_path):
    out = finish(start([sys.executable, PROBE, str(tmp_path)]), timeout=120)
    (report,) = probe_reports(tmp_path, world=1)
    assert (report["launcher"], report["backend"], report["device"]) == ("none", "gloo", "cpu"), out


def test_missing_peer_times_out_instead_of_hanging():
    port = str(free_port())
    env = launch_env({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _STRAGGLER, "5"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "1/2 clients joined" in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - began < 60


def test_stalled_collective_times_out_instead_of_hanging():
    port = str(free_port())
    procs = [start([sys.executable, "-c", _STRAGGLER, "5"],
                   launch_env({"RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                               "MASTER_PORT": port}))
             for r in range(2)]
    began = time.monotonic()
    try:
        out, _ = procs[0].communicate(timeout=120)
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode != 0
    assert "timed out" in out.lower() or "timeout" in out.lower(), out[-2000:]
    assert time.monotonic() - began < 60
