"""The training command: `python -m dist_hyena.train [--config NAME|PATH] [--resume] [section.key=value ...]`.

`launch/train.py` is the same command for launchers that start a script (`deepspeed launch/train.py ...`).
Runs under deepspeed, torchrun, accelerate launch, mpirun or srun alike. With no arguments it trains the
shipped defaults, dist_hyena/configs/default.yaml (a small n-body model; data generated on first use), from
whatever directory it is started in: data/ and runs/ are relative to it.
"""

import argparse
import os
import sys

from dist_hyena.data import DataError
from dist_hyena.train import ConfigError, load_config, train
from dist_hyena.train.checkpoint import CheckpointError
from dist_hyena.train.config import DEFAULT_CONFIG, shipped_config_names
from dist_hyena.train.guards import NonFiniteError

# Exit codes: a bad config or input, a non-finite loss, and a SIGTERM answered with a checkpoint
# (128 + 15, as a shell reports a process that SIGTERM ended; the run is not finished).
BAD_INPUT, NON_FINITE, TERMINATED = 2, 3, 143


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help=f"YAML run config, or a shipped one by name ({', '.join(shipped_config_names())}); "
                             "default: %(default)s")
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
