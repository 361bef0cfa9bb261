"""Readers: one split's samples, as model inputs for a token block (docs/design.md §4.4).

`StoreReader` reads a finished zarr store, decoding only the chunks that overlap the
requested token block, caching decoded regions; its task (`dist_hyena.tasks`) says which arrays
make the inputs. `GeneratedRecall` makes recall samples on the fly from a seed (no store). Both
give, for sample ids and a token block [t0, t1), the inputs "x", "f" and targets "y" that
`dist_hyena.tasks` describes.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from dist_hyena.data import store
from dist_hyena.data.layout import SPLITS
from dist_hyena.data.recall_task import POSITION_DIM, RecallTask
from dist_hyena.data.store import DataError
from dist_hyena.tasks import task_of

_CACHE_BYTES = 256 * 2**20


class StoreReader:
    """Reads one split of a finished store. `chunk_reads` counts decoded chunks by key."""

    def __init__(self, path: str | Path, split: str, cache_bytes: int = _CACHE_BYTES):
        root = store.open_store(path, command=_create_command(path))
        self.meta = root.attrs.asdict()
        try:
            self.task = task_of(self.meta)
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        if split not in self.meta["splits"]:
            raise KeyError(f"{path} has no split {split!r}; it has {sorted(self.meta['splits'])}")
        self.group = root[split]
        self.n_samples = self.meta["splits"][split]
        self.samples_per_chunk = self.meta["samples_per_chunk"]
        self.chunk_reads: Counter[str] = Counter()
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes

    def batch_tokens(self, indices: np.ndarray) -> int:
        """The sequence length of the batch of samples ``indices``: a store's are all ``n_tokens`` long."""
        return self.meta["n_tokens"]

    def read(self, indices: np.ndarray, t0: int, t1: int) -> dict[str, np.ndarray]:
        return self.task.read(self.meta, self._gather, indices, t0, t1)

    def _gather(self, name: str, indices: np.ndarray, sel: tuple) -> np.ndarray:
        """array[indices, *sel] with sel entries ints or slices (one per non-sample dim)."""
        rows = np.asarray(indices) // self.samples_per_chunk
        parts = {int(r): self._region(name, int(r), sel) for r in np.unique(rows)}
        return np.stack([parts[int(r)][i - r * self.samples_per_chunk] for i, r in zip(indices, rows, strict=True)])

    def _region(self, name: str, row: int, sel: tuple) -> np.ndarray:
        """array[samples of chunk row `row`, *sel]: one zarr read that decodes only the chunks
        it overlaps; on failure, chunk-by-chunk reads name the bad chunk."""
        key = (name, row, repr(sel))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        array = self.group[name]
        start, stop = row * array.chunks[0], min((row + 1) * array.chunks[0], array.shape[0])
        bounds = [
            (s, s + 1) if isinstance(s, int) else s.indices(n)[:2] for s, n in zip(sel, array.shape[1:], strict=True)
        ]
        ranges = [range(a // k, -(-b // k)) for (a, b), k in zip(bounds, array.chunks[1:], strict=True)]
        chunks = [(row, *coords) for coords in itertools.product(*ranges)]
        try:
            out = array[(slice(start, stop), *sel)]
        except Exception:
            out = None
        if out is None or not np.isfinite(out).all():
            for coords in chunks:
                store.read_chunk(array, coords)  # raises DataError naming the chunk
            raise DataError(f"array {array.path}: rows [{start}, {stop}) could not be read")
        self.chunk_reads.update(store.chunk_key(array, c) for c in chunks)
        self._cache[key] = out
        self._cache_bytes += out.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return out


def _create_command(path) -> str:
    return (f"python datasets/nbody.py --preset nbody5 --out {path}  (or datasets/recall.py --out {path}, or "
            f"datasets/md.py --topology ... --trajectory ... --out {path})")


class GeneratedRecall:
    """Associative recall made on the fly from a seed, no store: pass it to StreamingLoader
    in place of a path. Each SP rank makes the whole sequence and keeps its block (O(N)
    per sample), so use a store when the same data is read many times.

    ``train_lengths``: training at several lengths. Each training batch is made at one length drawn from this
    list, a pure function of (seed, the batch's first sample id), so all SP ranks of a group agree and a resumed
    run sees the same batches; validation and test stay at ``n_tokens``."""

    def __init__(
        self,
        n_tokens: int,
        seed: int = 0,
        sizes: dict[str, int] | None = None,
        vocab_size: int = 4,
        variant: str = "random",
        positions: str = "index",
        train_lengths: list[int] | tuple[int, ...] | None = None,
    ):
        self.task = RecallTask(n_tokens, seed, vocab_size, variant, positions)
        self.train_lengths = tuple(int(n) for n in train_lengths or ())
        self._tasks = {n_tokens: self.task}
        for n in self.train_lengths:  # the checks of the evaluation length, naming the value at fault
            try:
                self._tasks.setdefault(n, RecallTask(n, seed, vocab_size, variant, positions))
            except ValueError as e:
                raise ValueError(f"train_lengths: {e}") from None
        sizes = sizes or {"train": 2000, "val": 200, "test": 200}
        self.meta = {**self.task.attrs(), "seed": seed, "splits": dict(sizes)}
        if self.train_lengths:
            self.meta["params"]["train_lengths"] = list(self.train_lengths)

    def task_of(self, n_tokens: int) -> RecallTask:
        """The task at ``n_tokens`` (one of ``n_tokens`` and ``train_lengths``)."""
        return self._tasks[n_tokens]

    def reader(self, split: str) -> _GeneratedRecallReader:
        if split not in SPLITS or split not in self.meta["splits"]:
            raise KeyError(f"no split {split!r}; splits are {sorted(self.meta['splits'])}")
        return _GeneratedRecallReader(self, split)


class _GeneratedRecallReader:
    def __init__(self, source: GeneratedRecall, split: str):
        self.source, self.split, self.meta = source, split, source.meta
        self.n_samples = source.meta["splits"][split]
        self.lengths = source.train_lengths if split == "train" else ()

    def batch_tokens(self, indices: np.ndarray) -> int:
        if not self.lengths:
            return self.meta["n_tokens"]
        rng = np.random.default_rng([self.source.task.seed, 1 << 21, int(indices[0])])
        return self.lengths[int(rng.integers(len(self.lengths)))]

    def read(self, indices: np.ndarray, t0: int, t1: int) -> dict[str, np.ndarray]:
        task = self.source.task_of(self.batch_tokens(indices))
        samples = [task.sample(self.split, int(i)) for i in indices]
        return {
            "x": np.stack([s[0][t0:t1] for s in samples])[:, :, None],
            "f": np.broadcast_to(task.encoding(t0, t1), (len(indices), t1 - t0, POSITION_DIM)),
            "y": np.stack([s[1] for s in samples])[:, None],
        }
