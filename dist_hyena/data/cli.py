"""The part of the preprocessing command lines that the datasets/*.py scripts share: the store's options
(chunking, --verify), the synthetic tasks' seed and split sizes, and running on every MPI rank without hangs."""

from __future__ import annotations

import argparse
import sys
import traceback

from dist_hyena.data import store
from dist_hyena.data.build import PRESETS, PreparationError, build_store
from dist_hyena.data.work import world_comm


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options of a generated (synthetic) dataset: the store's, the seed and the split sizes."""
    add_store_args(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="dataset seed; sample i of a split depends only on "
        "(seed, split, i), so any number of ranks writes the same bytes",
    )
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}", type=int, default=None, help=f"number of {split} samples (default: preset's)")


def add_store_args(parser: argparse.ArgumentParser) -> None:
    """The options of every preprocessing command: where the store goes, its chunking, --verify."""
    parser.add_argument("--out", required=True, help="store directory to create, or to complete after a crash")
    parser.add_argument(
        "--samples-per-chunk",
        type=int,
        default=None,
        help="samples per chunk along the sample axis; also the unit of work per rank",
    )
    parser.add_argument(
        "--tokens-per-chunk",
        type=int,
        default=None,
        help="tokens per chunk along the token axis (default: all tokens, at most 65536); "
        "a sequence-parallel rank reads only the chunks of its token block",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="do not generate: check shapes, counts, finiteness, chunks and checksums of --out",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def preset_layout(args: argparse.Namespace, preset: str) -> tuple[dict[str, int], int]:
    """The split sizes and samples per chunk of a preset, with the command line's overrides."""
    defaults = PRESETS[preset]
    sizes = {s: getattr(args, s) if getattr(args, s) is not None else n for s, n in defaults["sizes"].items()}
    return sizes, args.samples_per_chunk or defaults["samples_per_chunk"]


def run(args: argparse.Namespace, make_task, layout) -> int:
    """Generate (or verify) on every rank; an error on any rank aborts all of them. ``make_task()`` builds the
    task on every rank (a ValueError or missing file there, the same on every rank, ends each cleanly);
    ``layout(task)`` -> (split sizes, samples per chunk)."""
    comm = world_comm()
    try:
        if args.verify:
            return _verify(args.out, comm)
        try:
            task = make_task()
        except (ValueError, FileNotFoundError) as e:
            raise PreparationError(str(e)) from None
        sizes, samples_per_chunk = layout(task)
        build_store(task, args.out, getattr(args, "seed", 0), sizes, samples_per_chunk, args.tokens_per_chunk,
                    comm=comm, progress=not args.no_progress)
    except PreparationError as e:  # every rank has it: a clean exit, no abort
        if comm.rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except (store.DataError, ValueError, FileNotFoundError) as e:
        print(f"error (rank {comm.rank}): {e}", file=sys.stderr, flush=True)
        _stop(comm)
        return 1
    except Exception:
        traceback.print_exc()
        _stop(comm)
        return 1
    if comm.rank == 0:
        print(f"{args.out}: complete", flush=True)
    return 0


def _stop(comm) -> None:
    if comm.size > 1:
        comm.Abort(1)  # the other ranks may be waiting in a barrier


def _verify(path: str, comm) -> int:
    problems = sum(comm.allgather(store.verify(path, comm.rank, comm.size)), [])
    if comm.rank == 0:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}", flush=True)
    return 1 if problems else 0
