"""Every collective that autograd must see, each a tiny autograd Function beside its mirror.

Layouts (dim 1 = tokens everywhere):
- token layout: rank r holds its contiguous token block, all channels;
- channel layout: rank r holds all tokens, its share of the channels.
Both the layout switch of strategy ``channels`` and the two exchanges of the six-step FFT
are one operation: the block transpose of a matrix ``[B, rows, cols, ...]`` sharded by rows
into one sharded by columns (``rows_to_columns``), or back (``columns_to_rows``). Each is
the other's backward. All of them run on ``all_to_all_single`` with split sizes, which
gloo (CPU) and NCCL (GPU) both provide, so uneven blocks need no padding.

Gradient convention: every SP rank's loss is its own term of the global loss (a replicated
output such as the recall head's contributes ``loss / sp`` per rank), and parameter
gradients are summed over the SP group. Hence the backward of a sum over ranks
(``sp_all_reduce``) sums the gradients, and the backward of ``gather_sequence`` sums the
gradient slices of the block it gathered (a reduce-scatter).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import ledger
from .mesh import Mesh, split_sizes


def _all_to_all(send: list[torch.Tensor], recv_shapes: list[tuple[int, ...]], mesh: Mesh,
                layer: str, op: str) -> list[torch.Tensor]:
    """Send ``send[s]`` to SP rank s; receive one tensor of ``recv_shapes[r]`` from each rank r."""
    me = mesh.sp_rank
    dtype = send[me].dtype
    if dtype.is_complex:  # collectives carry real numbers; a complex value travels as its (re, im) pair
        send = [torch.view_as_real(s) for s in send]
        recv_shapes = [(*shape, 2) for shape in recv_shapes]
    if mesh.sp == 1:
        received = [send[0].clone()]
    else:
        flat_in = torch.cat([s.reshape(-1) for s in send])
        in_splits = [s.numel() for s in send]
        out_splits = [int(torch.Size(shape).numel()) for shape in recv_shapes]
        flat_out = flat_in.new_empty(sum(out_splits))
        dist.all_to_all_single(flat_out, flat_in, out_splits, in_splits, group=mesh.sp_group)
        pieces = flat_out.split(out_splits)
        received = [piece.view(shape) for piece, shape in zip(pieces, recv_shapes, strict=True)]
        log = ledger.active()
        if log is not None:
            log.add(layer, op, (sum(in_splits) - in_splits[me]) * flat_in.element_size())
    if dtype.is_complex:
        received = [torch.view_as_complex(r) for r in received]
    return received


def _offsets(counts: list[int]) -> list[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


def _rows_to_columns(x, row_counts, col_counts, mesh, layer, op):
    """``[B, rows_me, cols, *rest]`` -> ``[B, rows, cols_me, *rest]``."""
    me, cut = mesh.sp_rank, _offsets(col_counts)
    rest = tuple(x.shape[3:])
    send = [x[:, :, cut[s]:cut[s + 1]] for s in range(mesh.sp)]
    shapes = [(x.shape[0], row_counts[r], col_counts[me], *rest) for r in range(mesh.sp)]
    return torch.cat(_all_to_all(send, shapes, mesh, layer, op), dim=1)


def _columns_to_rows(x, row_counts, col_counts, mesh, layer, op):
    """``[B, rows, cols_me, *rest]`` -> ``[B, rows_me, cols, *rest]``."""
    me, cut = mesh.sp_rank, _offsets(row_counts)
    rest = tuple(x.shape[3:])
    send = [x[:, cut[s]:cut[s + 1]] for s in range(mesh.sp)]
    shapes = [(x.shape[0], row_counts[me], col_counts[r], *rest) for r in range(mesh.sp)]
    return torch.cat(_all_to_all(send, shapes, mesh, layer, op), dim=2)


class _RowsToColumns(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, row_counts, col_counts, mesh, layer, op):
        ctx.args = (row_counts, col_counts, mesh, layer, op)
        return _rows_to_columns(x, row_counts, col_counts, mesh, layer, op)

    @staticmethod
    def backward(ctx, grad):
        row_counts, col_counts, mesh, layer, op = ctx.args
        return _columns_to_rows(grad, row_counts, col_counts, mesh, layer, op + ".backward"), *[None] * 5


class _ColumnsToRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, row_counts, col_counts, mesh, layer, op):
        ctx.args = (row_counts, col_counts, mesh, layer, op)
        return _columns_to_rows(x, row_counts, col_counts, mesh, layer, op)

    @staticmethod
    def backward(ctx, grad):
        row_counts, col_counts, mesh, layer, op = ctx.args
        return _rows_to_columns(grad, row_counts, col_counts, mesh, layer, op + ".backward"), *[None] * 5


def rows_to_columns(x: torch.Tensor, row_counts: list[int], col_counts: list[int], mesh: Mesh,
                    layer: str = "", op: str = "rows_to_columns") -> torch.Tensor:
    """Block transpose ``[B, rows_me, cols, *rest]`` -> ``[B, rows, cols_me, *rest]`` over the SP group.

    ``row_counts[r]`` / ``col_counts[r]``: rows / columns held by SP rank r before / after.
    """
    return _RowsToColumns.apply(x, list(row_counts), list(col_counts), mesh, layer, op)


def columns_to_rows(x: torch.Tensor, row_counts: list[int], col_counts: list[int], mesh: Mesh,
                    layer: str = "", op: str = "columns_to_rows") -> torch.Tensor:
    """Block transpose ``[B, rows, cols_me, *rest]`` -> ``[B, rows_me, cols, *rest]``; mirror of the above."""
    return _ColumnsToRows.apply(x, list(row_counts), list(col_counts), mesh, layer, op)


def to_channel_layout(x: torch.Tensor, token_counts: list[int], channel_counts: list[int], mesh: Mesh,
                      layer: str = "") -> torch.Tensor:
    """Token layout ``[B, n_me, W]`` -> channel layout ``[B, N, w_me]`` (``w_r = channel_counts[r]``)."""
    return rows_to_columns(x, token_counts, channel_counts, mesh, layer, "to_channel_layout")


def to_token_layout(x: torch.Tensor, token_counts: list[int], channel_counts: list[int], mesh: Mesh,
                    layer: str = "") -> torch.Tensor:
    """Channel layout ``[B, N, w_me]`` -> token layout ``[B, n_me, W]``; mirrors :func:`to_channel_layout`."""
    return columns_to_rows(x, token_counts, channel_counts, mesh, layer, "to_token_layout")


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mesh, layer):
        ctx.args = (mesh, layer)
        return _all_reduce_sum(x, mesh, layer, "all_reduce")

    @staticmethod
    def backward(ctx, grad):
        mesh, layer = ctx.args
        return _all_reduce_sum(grad, mesh, layer, "all_reduce.backward"), None, None


def _all_reduce_sum(x, mesh, layer, op):
    out = x.clone(memory_format=torch.contiguous_format)
    if mesh.sp > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=mesh.sp_group)
        log = ledger.active()
        if log is not None:
            log.add(layer, op, out.numel() * out.element_size())
    return out


def sp_all_reduce(t: torch.Tensor, mesh: Mesh, layer: str = "") -> torch.Tensor:
    """Sum of ``t`` over the SP group, differentiable (backward: the sum of the gradients)."""
    return _AllReduceSum.apply(t, mesh, layer)


def shard_sequence(x: torch.Tensor, mesh: Mesh) -> torch.Tensor:
    """This rank's contiguous token block of ``x`` ``[B, N, ...]`` (dim 1), ``tensor_split`` convention."""
    if x.dim() < 2:
        raise ValueError(f"shard_sequence expects [B, N, ...] (tokens in dim 1), got shape {tuple(x.shape)}")
    n = x.shape[1]
    if n < mesh.sp:
        raise ValueError(f"shard_sequence: {n} tokens cannot be split over sp={mesh.sp} ranks "
                         "(every rank needs at least one token)")
    start, stop = mesh.token_block(n)
    return x[:, start:stop]


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counts, mesh, layer):
        ctx.args = (counts, mesh, layer)
        rest = tuple(x.shape[2:])
        shapes = [(x.shape[0], c, *rest) for c in counts]
        return torch.cat(_all_to_all([x] * mesh.sp, shapes, mesh, layer, "gather_sequence"), dim=1)

    @staticmethod
    def backward(ctx, grad):
        counts, mesh, layer = ctx.args
        me, cut = mesh.sp_rank, _offsets(counts)
        send = [grad[:, cut[s]:cut[s + 1]] for s in range(mesh.sp)]
        shapes = [tuple(send[me].shape)] * mesh.sp
        pieces = _all_to_all(send, shapes, mesh, layer, "gather_sequence.backward")
        return torch.stack(pieces).sum(0), None, None, None


def gather_sequence(x_loc: torch.Tensor, mesh: Mesh, layer: str = "") -> torch.Tensor:
    """All token blocks ``[B, n_r, ...]`` of the SP group joined along dim 1: ``[B, N, ...]`` on each rank."""
    counts = mesh.token_counts(x_loc.shape[1], device=x_loc.device)
    return _GatherSequence.apply(x_loc, counts, mesh, layer)


__all__ = ["columns_to_rows", "gather_sequence", "rows_to_columns", "shard_sequence", "sp_all_reduce",
           "split_sizes", "to_channel_layout", "to_token_layout"]
