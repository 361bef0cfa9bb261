"""Train SE(3)-Hyena: `deepspeed launch/train.py [--config PATH] [--resume] [section.key=value ...]`.

Runs under deepspeed, torchrun, accelerate launch, mpirun or srun alike. With no
arguments it trains configs/default.yaml (a small n-body model; data generated on first use).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so a checkout runs as is

from dist_hyena.data import DataError  # noqa: E402
from dist_hyena.train import ConfigError, load_config, train  # noqa: E402
from dist_hyena.train.checkpoint import CheckpointError  # noqa: E402
from dist_hyena.train.config import DEFAULT_CONFIG  # noqa: E402
from dist_hyena.train.guards import NonFiniteError  # noqa: E402

# Exit codes: a bad config or input, a non-finite loss, and a SIGTERM answered with a checkpoint
# (128 + 15, as a shell reports a process that SIGTERM ended; the run is not finished).
BAD_INPUT, NON_FINITE, TERMINATED = 2, 3, 143


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML run config (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest complete checkpoint")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    rank = os.environ.get("RANK", "0")
    try:
        summary = train(cfg, resume=args.resume)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr, flush=True)
        return BAD_INPUT
    except NonFiniteError as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr, flush=True)
        return NON_FINITE
    return TERMINATED if summary.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
