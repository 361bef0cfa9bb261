"""Readers: one split's samples, as model inputs for a token block (DESIGN §4.4).

`StoreReader` reads a finished zarr store chunk by chunk, only the chunks that overlap the
requested token block, caching decoded regions. `GeneratedRecall` makes recall samples on
the fly from a seed (no store). Both give, for sample ids and a token block [t0, t1):
  x [B, n, C_in, 3]  n-body: position and velocity at the input frame; recall: the token
  f [B, n, S]        n-body: charge; recall: sinusoidal encoding of the global token index
  y                  n-body: [B, n, 1, 3] positions at the target frame; recall: [B, 1, 3]
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from dist_hyena.data import store
from dist_hyena.data.layout import SPLITS
from dist_hyena.data.recall_task import RecallTask, position_encoding

_CACHE_BYTES = 256 * 2**20


class StoreReader:
    """Reads one split of a finished store. `chunk_reads` counts decoded chunks by key."""

    def __init__(self, path: str | Path, split: str, cache_bytes: int = _CACHE_BYTES):
        root = store.open_store(path, command=_create_command(path))
        self.meta = root.attrs.asdict()
        if split not in self.meta["splits"]:
            raise KeyError(f"{path} has no split {split!r}; it has {sorted(self.meta['splits'])}")
        self.group = root[split]
        self.n_samples = self.meta["splits"][split]
        self.samples_per_chunk = self.meta["samples_per_chunk"]
        self.chunk_reads: Counter[str] = Counter()
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes

    def read(self, indices: np.ndarray, t0: int, t1: int) -> dict[str, np.ndarray]:
        m = self.meta
        if m["task"] == "nbody":
            tok = slice(t0, t1)
            pos_in = self._gather("positions", indices, (m["input_frame"], tok, slice(None)))
            vel_in = self._gather("velocities", indices, (m["input_frame"], tok, slice(None)))
            return {
                "x": np.stack([pos_in, vel_in], axis=2),
                "f": self._gather("charges", indices, (tok,))[..., None],
                "y": self._gather("positions", indices, (m["target_frame"], tok, slice(None)))[:, :, None],
            }
        tokens = self._gather("tokens", indices, (slice(t0, t1), slice(None)))
        return {
            "x": tokens[:, :, None],
            "f": np.broadcast_to(position_encoding(t0, t1), (len(indices), t1 - t0, 16)),
            "y": self._gather("target", indices, (slice(None),))[:, None],
        }

    def _gather(self, name: str, indices: np.ndarray, sel: tuple) -> np.ndarray:
        """array[indices, *sel] with sel entries ints or slices (one per non-sample dim)."""
        rows = np.asarray(indices) // self.samples_per_chunk
        parts = {int(r): self._region(name, int(r), sel) for r in np.unique(rows)}
        return np.stack(
            [parts[int(r)][i - r * self.samples_per_chunk] for i, r in zip(indices, rows, strict=True)]
        )

    def _region(self, name: str, row: int, sel: tuple) -> np.ndarray:
        """array[samples of chunk row `row`, *sel], decoding only the chunks it overlaps."""
        key = (name, row, repr(sel))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        array = self.group[name]
        dims = list(zip(sel, array.chunks[1:], array.shape[1:], strict=True))
        bounds = [(s, s + 1) if isinstance(s, int) else s.indices(n)[:2] for s, _, n in dims]
        coord_ranges = [range(a // k, -(-b // k)) for (a, b), (_, k, _) in zip(bounds, dims, strict=True)]
        start, stop = row * array.chunks[0], min((row + 1) * array.chunks[0], array.shape[0])
        out = np.empty((stop - start, *[b - a for a, b in bounds]), dtype=np.float32)
        for coords in itertools.product(*coord_ranges):
            chunk = store.read_chunk(array, (row, *coords))
            self.chunk_reads[store.chunk_key(array, (row, *coords))] += 1
            src, dst = [slice(None)], [slice(None)]
            for c, (a, b), (_, k, _) in zip(coords, bounds, dims, strict=True):
                lo, hi = max(a, c * k), min(b, (c + 1) * k)
                src.append(slice(lo - c * k, hi - c * k))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = chunk[tuple(src)]
        out = out[(slice(None), *[0 if isinstance(s, int) else slice(None) for s in sel])]
        self._cache[key] = out
        self._cache_bytes += out.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return out


def _create_command(path) -> str:
    return f"python datasets/nbody.py --preset nbody5 --out {path}  (or datasets/recall.py --out {path})"


class GeneratedRecall:
    """Associative recall made on the fly from a seed, no store: pass it to StreamingLoader
    in place of a path. Each SP rank makes the whole sequence and keeps its block (O(N)
    per sample), so use a store when the same data is read many times."""

    def __init__(
        self,
        n_tokens: int,
        seed: int = 0,
        sizes: dict[str, int] | None = None,
        vocab_size: int = 4,
        variant: str = "random",
    ):
        self.task = RecallTask(n_tokens, seed, vocab_size, variant)
        sizes = sizes or {"train": 2000, "val": 200, "test": 200}
        self.meta = {**self.task.attrs(), "seed": seed, "splits": dict(sizes)}

    def reader(self, split: str) -> _GeneratedRecallReader:
        if split not in SPLITS or split not in self.meta["splits"]:
            raise KeyError(f"no split {split!r}; splits are {sorted(self.meta['splits'])}")
        return _GeneratedRecallReader(self, split)


class _GeneratedRecallReader:
    def __init__(self, source: GeneratedRecall, split: str):
        self.task, self.split, self.meta = source.task, split, source.meta
        self.n_samples = source.meta["splits"][split]

    def read(self, indices: np.ndarray, t0: int, t1: int) -> dict[str, np.ndarray]:
        samples = [self.task.sample(self.split, int(i)) for i in indices]
        return {
            "x": np.stack([s[0][t0:t1] for s in samples])[:, :, None],
            "f": np.broadcast_to(position_encoding(t0, t1), (len(indices), t1 - t0, 16)),
            "y": np.stack([s[1] for s in samples])[:, None],
        }
