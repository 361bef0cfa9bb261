"""Sequence parallelism: the (dp, sp) mesh, differentiable collectives, distributed convolutions.

Knows nothing of datasets or of DeepSpeed; the model uses it only when given a mesh.
"""

from . import ledger
from .conv import STRATEGIES, SequenceParallelConv, channel_partition, resolve_strategy
from .mappings import (
    columns_to_rows,
    gather_sequence,
    halo_exchange,
    rows_to_columns,
    shard_sequence,
    sp_all_reduce,
    to_channel_layout,
    to_token_layout,
)
from .mesh import Mesh, init_mesh, split_sizes

__all__ = [
    "STRATEGIES",
    "Mesh",
    "SequenceParallelConv",
    "channel_partition",
    "columns_to_rows",
    "gather_sequence",
    "halo_exchange",
    "init_mesh",
    "ledger",
    "resolve_strategy",
    "rows_to_columns",
    "shard_sequence",
    "sp_all_reduce",
    "split_sizes",
    "to_channel_layout",
    "to_token_layout",
]
