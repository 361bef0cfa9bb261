"""Datasets: n-body and associative-recall generation into zarr stores, and streaming.

from dist_hyena.data import StreamingLoader, generate_store
generate_store("nbody5", "data/nbody5", seed=0, train=1000, val=200, test=200)
loader = StreamingLoader("data/nbody5", "train", batch_size=100)
"""

from dist_hyena.data.build import PRESETS, build_store, generate_store, make_task
from dist_hyena.data.readers import GeneratedRecall, StoreReader
from dist_hyena.data.store import DataError, open_store, verify
from dist_hyena.data.stream import StreamingDataset, StreamingLoader, epoch_batches

__all__ = [
    "PRESETS",
    "DataError",
    "GeneratedRecall",
    "StoreReader",
    "StreamingDataset",
    "StreamingLoader",
    "build_store",
    "epoch_batches",
    "generate_store",
    "make_task",
    "open_store",
    "verify",
]
