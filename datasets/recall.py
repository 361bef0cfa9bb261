"""Generate an equivariant associative-recall dataset store (zarr v3), with MPI or not.

    mpiexec -n 4 python datasets/recall.py --out data/recall --n-tokens 1048576 --train 256
    python datasets/recall.py --out data/recall --variant fixed --n-tokens 257
    python datasets/recall.py --out data/recall --verify

For data made on the fly without a store, use dist_hyena.data.GeneratedRecall.
"""

import argparse
import sys

from dist_hyena.data.build import make_task
from dist_hyena.data.cli import add_common_args, preset_layout, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument(
        "--n-tokens",
        type=int,
        default=None,
        help="sequence length, >= 3: (key, value) pairs then the query (default 1024; "
        "an even length starts with one zero pad token)",
    )
    parser.add_argument("--vocab-size", type=int, default=None, help="vocabulary size (default 4, as in the paper)")
    parser.add_argument(
        "--variant",
        choices=("random", "fixed"),
        default=None,
        help="random: a new vocabulary per sequence (default); fixed: one vocabulary, each sequence randomly rotated",
    )
    args = parser.parse_args()
    return run(args, lambda: make_task("recall", args.seed, n_tokens=args.n_tokens, vocab_size=args.vocab_size,
                                       variant=args.variant), lambda task: preset_layout(args, "recall"))


if __name__ == "__main__":
    sys.exit(main())
