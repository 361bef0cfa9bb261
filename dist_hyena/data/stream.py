"""Streaming batches to DP x SP ranks (docs/design.md §4.4).

Each epoch has a seeded permutation of the split's samples, cut into global batches of
batch_size x dp_size; DP rank r takes the r-th slice of each, so DP ranks see disjoint
samples. All SP ranks of a group take the same samples and each reads only its contiguous
token block (split like torch.tensor_split). The loader's state is layout-independent:
(epoch, samples = global samples consumed in the epoch, seed), so a run resumed at another
dp (or sp) continues from the same global position and sees the samples an uninterrupted
run would. Reads run ahead in a background thread (num_workers = 0) or in DataLoader worker
processes, worker w making batches k with k % num_workers == w, which the DataLoader hands
out round-robin — in the original order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_hyena.data.readers import GeneratedRecall, StoreReader
from dist_hyena.parallel.mesh import token_block


def epoch_batches(
    n_samples: int,
    batch_size: int,
    epoch: int,
    seed: int,
    shuffle: bool,
    dp_rank: int,
    dp_size: int,
    drop_last: bool,
    start: int = 0,
) -> list[np.ndarray]:
    """Sample ids of each batch of `dp_rank` in `epoch`, from sample `start` of the epoch's order on.

    Global batch k is ``order[start + kG : start + (k + 1)G]`` with G = batch_size x dp_size, and DP rank r takes
    its r-th slice of `batch_size`: the samples a step sees do not depend on how the global batch is split, so a run
    resumed at another dp continues with the very samples an uninterrupted run would see. drop_last: only full
    global batches; otherwise the order is padded by wrapping around (like DistributedSampler) to a multiple of
    dp_size, so ranks stay in step, and the last global batch is shorter (each rank an equal slice of it)."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank must be in [0, {dp_size}), got {dp_rank}")
    order = np.random.default_rng([seed, epoch]).permutation(n_samples) if shuffle else np.arange(n_samples)
    rest, per_step = order[start:], batch_size * dp_size
    if drop_last:
        rest = rest[: len(rest) // per_step * per_step]
    else:
        rest = np.resize(rest, -(-len(rest) // dp_size) * dp_size)  # np.resize repeats from the start
    batches = []
    for k in range(0, len(rest), per_step):
        chunk = rest[k : k + per_step]
        share = len(chunk) // dp_size
        batches.append(chunk[dp_rank * share : (dp_rank + 1) * share])
    return batches


class StreamingDataset(IterableDataset):
    """Batches of one epoch from global sample `start` on, as dicts of tensors; splits the batches
    among DataLoader workers (use the DataLoader with batch_size=None)."""

    def __init__(
        self,
        source,
        split: str,
        batch_size: int,
        epoch: int,
        start: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        dp_rank: int,
        dp_size: int,
        sp_rank: int,
        sp_size: int,
    ):
        super().__init__()
        self.source, self.split, self.batch_size = source, split, batch_size
        self.epoch, self.start, self.seed, self.shuffle, self.drop_last = (
            epoch,
            start,
            seed,
            shuffle,
            drop_last,
        )
        self.dp_rank, self.dp_size, self.sp_rank, self.sp_size = dp_rank, dp_size, sp_rank, sp_size
        self.reader = None  # opened lazily in the process that reads (main or worker)

    def open(self):
        if self.reader is None:
            if isinstance(self.source, GeneratedRecall):
                self.reader = self.source.reader(self.split)
            else:
                self.reader = StoreReader(self.source, self.split)
        return self.reader

    def batches(self) -> list[np.ndarray]:
        return epoch_batches(
            self.open().n_samples,
            self.batch_size,
            self.epoch,
            self.seed,
            self.shuffle,
            self.dp_rank,
            self.dp_size,
            self.drop_last,
            self.start,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        reader = self.open()
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        for k, ids in enumerate(self.batches()):
            if k % n_workers != worker:
                continue
            t0, t1 = token_block(reader.batch_tokens(ids), self.sp_rank, self.sp_size)
            arrays = reader.read(ids, t0, t1)
            # C-contiguous and writeable: a view of a shared (cached) array is copied, never aliased
            batch = {name: torch.from_numpy(np.require(a, np.float32, ["C", "W"])) for name, a in arrays.items()}
            batch["index"] = torch.from_numpy(ids.astype(np.int64))
            yield batch


class StreamingLoader:
    """The training loader. Iterating yields batch dicts (float32 tensors):
    "x" [B, n_loc, C_in, 3], "f" [B, n_loc, S], "y" (n-body [B, n_loc, 1, 3], recall
    [B, 1, 3]), "index" [B] int64; n_loc is this SP rank's token block.

    `path` is a store directory or a GeneratedRecall. An epoch that runs to the end moves
    the loader to the next epoch; set_epoch(e) starts epoch e from its first batch;
    load_state_dict(state) makes the next iteration continue exactly where `state` was taken, also when
    `state` comes from a loader of another dp_size (the same global batch size continues the same global
    batches; another one cuts the epoch's order at the same sample, and the epoch's last partial global batch
    is dropped at the new size).
    With num_workers = 0, `reader.chunk_reads` counts the chunks decoded.
    """

    def __init__(
        self,
        path: str | Path | GeneratedRecall,
        split: str,
        batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        sp_rank: int = 0,
        sp_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        prefetch: int = 2,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = path if isinstance(path, GeneratedRecall) else Path(path)
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.dp_rank, self.dp_size, self.sp_rank, self.sp_size = dp_rank, dp_size, sp_rank, sp_size
        self.num_workers, self.prefetch = num_workers, prefetch
        self.epoch, self.samples = 0, 0  # samples: global samples of the epoch consumed (by all DP ranks)
        probe = self._dataset(0)
        self.reader = probe.open()  # fails early and clearly on a bad store; counts reads with num_workers=0
        self.meta = dict(self.reader.meta)
        token_block(self.meta["n_tokens"], sp_rank, sp_size)  # validates the SP coordinates
        self._n_batches = len(probe.batches())

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.dp_size

    def _dataset(self, start: int) -> StreamingDataset:
        return StreamingDataset(
            self.source,
            self.split,
            self.batch_size,
            self.epoch,
            start,
            seed=self.seed,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            sp_rank=self.sp_rank,
            sp_size=self.sp_size,
        )

    def __len__(self) -> int:
        return self._n_batches

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch (after load_state_dict, just iterate)."""
        self.epoch, self.samples = epoch, 0

    def state_dict(self) -> dict:
        """Layout-independent: no rank, no per-rank batch size."""
        return {"epoch": self.epoch, "samples": self.samples, "seed": self.seed, "split": self.split,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "split"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]!r} but this loader has {getattr(self, key)!r}; "
                    "resuming would not give the same batches"
                )
        if "samples" in state:
            samples = int(state["samples"])
        else:  # saved before format 2: batches consumed per rank, each rank a contiguous share of the epoch
            samples = int(state["position"]) * int(state["batch_size"]) * int(state["dp_size"])
        self.epoch, self.samples = int(state["epoch"]), samples

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        dataset = self._dataset(self.samples)
        if self.num_workers > 0:
            batches = iter(
                DataLoader(
                    dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=max(1, self.prefetch)
                )
            )
        else:
            dataset.reader = self.reader
            batches = _prefetched(iter(dataset), self.prefetch)
        for batch in batches:
            self.samples += self.global_batch
            yield batch
        self.epoch, self.samples = self.epoch + 1, 0


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """Run `items` in a background thread, up to `depth` ahead; errors re-raise here.
    Closing the consumer stops the thread."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", done))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(("error", e))

    thread = threading.Thread(target=produce, daemon=True, name="dist_hyena-prefetch")
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "error":
                raise item
            if kind == "end":
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
