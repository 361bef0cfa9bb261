"""Store layout facts shared by writers and readers (docs/design.md §4.3).

A store holds one group per split; every array is indexed by sample first, chunked
along samples (`samples_per_chunk`, the unit of preprocessing work) and, where it has
one, along tokens (`tokens_per_chunk`, the unit a sequence-parallel rank reads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
# Per-unit digests live beside the data; a unit counts as written once its row is set.
DIGEST_ARRAY = "unit_sha256"


@dataclass(frozen=True)
class ArraySpec:
    """One array of a split: per-sample shape and per-sample chunk shape (the sample axis
    is prepended to both); token_axis is the token dim in the full array, or None."""

    name: str
    sample_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    token_axis: int | None = None

    def shape(self, n_samples: int) -> tuple[int, ...]:
        return (n_samples, *self.sample_shape)

    def chunks(self, samples_per_chunk: int) -> tuple[int, ...]:
        return (samples_per_chunk, *self.chunk_shape)

    def to_json(self) -> dict:
        return {
            "sample_shape": list(self.sample_shape),
            "chunk_shape": list(self.chunk_shape),
            "token_axis": self.token_axis,
        }


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: a function of (seed, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def n_units(n_samples: int, samples_per_chunk: int) -> int:
    return -(-n_samples // samples_per_chunk)


def unit_range(unit: int, n_samples: int, samples_per_chunk: int) -> tuple[int, int]:
    """Samples [start, stop) of work unit `unit` (one chunk row along samples)."""
    start = unit * samples_per_chunk
    return start, min(start + samples_per_chunk, n_samples)

