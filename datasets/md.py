"""Preprocess a molecular-dynamics trajectory (any format MDAnalysis reads) into a dataset store (zarr v3),
in parallel with MPI or in one process.

    python datasets/md.py --topology adk.psf --trajectory adk_dims.dcd --out data/md_adk
    mpiexec -n 4 python datasets/md.py --topology md.tpr --trajectory md.xtc --out data/md --select protein \\
        --delta 2 --stride 1
    python datasets/md.py --out data/md_adk --verify

A sample is (frame t, frame t + delta), its tokens the selected atoms in topology order; the splits are
contiguous frame ranges (train, then val, then test at the end of the trajectory) separated by --gap frames.
Re-running the same command after a crash completes only the missing chunks; the result is byte-identical to
an uninterrupted run with any number of ranks.
"""

import argparse
import sys

from dist_hyena.data.cli import add_store_args, run
from dist_hyena.data.md_task import MDParams, MDTask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_args(parser)
    parser.add_argument("--topology", help="topology file (PSF, TPR, GRO, PDB, PRMTOP, LAMMPS data, ...)")
    parser.add_argument("--trajectory", nargs="+", help="trajectory file(s) (DCD, XTC, TRR, NetCDF, ...), "
                        "read one after another as one trajectory")
    parser.add_argument("--select", default="all", help="MDAnalysis selection of the atoms that are the tokens "
                        "(default: all), e.g. 'protein', 'protein and not name H*'")
    parser.add_argument("--delta", type=int, default=1, help="frames between a sample's input and target (default 1)")
    parser.add_argument("--stride", type=int, default=1, help="frames between consecutive samples (default 1)")
    parser.add_argument("--val-frames", type=int, default=None,
                        help="frames of the validation range (default: 10%% of the trajectory, at least delta + 1)")
    parser.add_argument("--test-frames", type=int, default=None,
                        help="frames of the test range, at the end of the trajectory (default as --val-frames)")
    parser.add_argument("--gap", type=int, default=None, help="frames left out between splits (default: delta)")
    parser.add_argument("--no-velocities", action="store_true",
                        help="do not store velocities even where the trajectory has them")
    args = parser.parse_args()
    if not args.verify and (not args.topology or not args.trajectory):
        parser.error("--topology and --trajectory are needed (or --verify to check an existing --out)")

    def make_task():
        return MDTask(MDParams(args.topology, tuple(args.trajectory or ()), args.select, args.delta, args.stride,
                               args.val_frames, args.test_frames, args.gap, not args.no_velocities))

    def layout(task):
        return task.sizes, args.samples_per_chunk or task.samples_per_chunk()

    return run(args, make_task, layout)


if __name__ == "__main__":
    sys.exit(main())
