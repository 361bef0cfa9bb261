"""Who writes what: an MPI-agnostic communicator interface and the split of work units.

The preprocessing code talks to a communicator with mpi4py's lower-case API (`rank`,
`size`, `bcast`, `allgather`, `barrier`, `Abort`); `SerialComm` is the one-process
stand-in, so the same code path runs in-process and under `mpiexec -n K`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# Set by MPI launchers (Open MPI, MPICH/Hydra, Slurm's PMI) in every rank's environment.
_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


class SerialComm:
    """A communicator of one process."""

    rank = 0
    size = 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def Abort(self, code: int = 1) -> None:  # noqa: N802  (mpi4py's name)
        sys.exit(code)


def world_comm():
    """MPI.COMM_WORLD when started by an MPI launcher, else SerialComm. mpi4py is imported
    only here, so the library itself never needs MPI."""
    if any(k in os.environ for k in _MPI_ENV):
        from mpi4py import MPI

        return MPI.COMM_WORLD
    return SerialComm()


def my_share(items: list, rank: int, size: int) -> list:
    """Round-robin share of `rank`: neighbouring units (similar cost) go to different ranks."""
    return items[rank::size]

