"""Datasets: n-body and associative-recall generation and molecular-dynamics trajectories into zarr stores,
and streaming.

from dist_hyena.data import StreamingLoader, generate_store
generate_store("nbody5", "data/nbody5", seed=0, train=1000, val=200, test=200)
md_store("data/md", "md.tpr", ["md.xtc"], select="protein")      # any trajectory MDAnalysis reads
loader = StreamingLoader("data/nbody5", "train", batch_size=100)
"""

from dist_hyena.data.build import PRESETS, build_store, generate_store, make_task, md_store
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
    "md_store",
    "open_store",
    "verify",
]
