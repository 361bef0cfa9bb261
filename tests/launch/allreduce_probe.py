"""A rank's check of dist_hyena.runtime under a real launcher: init, all-reduce, report.

Usage: ``<launcher> tests/launch/allreduce_probe.py OUT_DIR``. Each rank writes
``OUT_DIR/rank<r>.json`` with what init_distributed returned and the all-reduced sum of
(rank + 1), which the launcher test compares with world * (world + 1) / 2.
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from dist_hyena.runtime import init_distributed, shutdown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--local_rank", type=int)  # the deepspeed launcher appends it; runtime reads the env
    out = parser.parse_args().out
    rt = init_distributed(timeout_s=60)
    value = torch.tensor([rt.rank + 1.0], device=rt.device)
    dist.all_reduce(value)
    report = {
        "rank": rt.rank,
        "world_size": rt.world_size,
        "local_rank": rt.local_rank,
        "device": str(rt.device),
        "backend": rt.backend,
        "launcher": rt.launcher,
        "master_addr": os.environ["MASTER_ADDR"],
        "dist_world_size": dist.get_world_size(),
        "dist_rank": dist.get_rank(),
        "sum": value.item(),
    }
    (out / f"rank{rt.rank}.json").write_text(json.dumps(report))
    shutdown()


if __name__ == "__main__":
    main()
