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

The halo exchange of the local (windowed) convolution runs on the same all-to-all: each rank's
block grows by the ``w`` tokens before it (and after it, ``circular``), fetched from their owners;
its backward adds the halo's gradients into the owners' blocks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


HALO_MODES = ("circular", "causal")


def _halo_rows(counts: list[int], w: int, mode: str, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s halo (not its own central rows): ``(pos, owner, row)``, in order of ``pos``.

    ``pos``: indices into the extended block ``[w + n + R]``; ``owner``: the SP rank holding each
    one's token; ``row``: that token's index in its owner's block. Causal positions before token 0
    (zeros) are left out.
    """
    cut = torch.tensor(_offsets(counts))
    n_tokens, a, n = int(cut[-1]), int(cut[rank]), counts[rank]
    pos = torch.arange(w) if mode == "causal" else torch.cat([torch.arange(w), torch.arange(w + n, 2 * w + n)])
    index = a - w + pos
    if mode == "circular":
        index = index % n_tokens
    else:
        keep = index >= 0
        pos, index = pos[keep], index[keep]
    owner = torch.searchsorted(cut[1:], index, right=True)
    return pos, owner, index - cut[owner]


@dataclass(frozen=True)
class _HaloPlan:
    """What one rank exchanges: all of it follows from ``(counts, w, mode)``, on every rank alike."""

    local_pos: torch.Tensor         # halo positions this rank owns itself ...
    local_rows: torch.Tensor        # ... and the rows of its block they copy
    recv_pos: list[torch.Tensor]    # recv_pos[s]: halo positions filled by SP rank s (empty for s = me)
    send_rows: list[torch.Tensor]   # send_rows[r]: rows of this block that SP rank r needs, in its order


@functools.lru_cache(maxsize=256)
def _halo_plan(counts: tuple[int, ...], w: int, mode: str, me: int, device: torch.device) -> _HaloPlan:
    """Built once per layer shape on the host; the index tensors live on ``device``."""
    sp, empty = len(counts), torch.zeros(0, dtype=torch.int64)
    pos, owner, rows = _halo_rows(list(counts), w, mode, me)
    mine = owner == me
    recv_pos = [empty if s == me else pos[owner == s] for s in range(sp)]
    send_rows = [empty] * sp
    for r in range(sp):
        if r != me:
            _, owner_r, rows_r = _halo_rows(list(counts), w, mode, r)
            send_rows[r] = rows_r[owner_r == me]
    return _HaloPlan(pos[mine].to(device), rows[mine].to(device), [p.to(device) for p in recv_pos],
                     [r.to(device) for r in send_rows])


def _halo_forward(t, plan, w, r_width, mesh, layer):
    """``[B, n_me, *feat]`` -> ``[B, w + n_me + R, *feat]``: own block in the middle, halo rows around it."""
    b, n, feat = t.shape[0], t.shape[1], tuple(t.shape[2:])
    ext = t.new_zeros((b, w + n + r_width, *feat))
    ext[:, w:w + n] = t
    ext[:, plan.local_pos] = t[:, plan.local_rows]
    if mesh.sp > 1:
        send = [t[:, rows] for rows in plan.send_rows]
        shapes = [(b, len(pos), *feat) for pos in plan.recv_pos]
        for pos, piece in zip(plan.recv_pos, _all_to_all(send, shapes, mesh, layer, "halo"), strict=True):
            ext[:, pos] = piece
    return ext


def _halo_backward(grad, plan, w, n, mesh, layer):
    """Mirror of :func:`_halo_forward`: each halo row's gradient goes back to its owner and is added there."""
    b, feat = grad.shape[0], tuple(grad.shape[2:])
    grad_t = grad[:, w:w + n].clone(memory_format=torch.contiguous_format)
    grad_t.index_add_(1, plan.local_rows, grad[:, plan.local_pos])
    if mesh.sp > 1:
        send = [grad[:, pos] for pos in plan.recv_pos]
        shapes = [(b, len(rows), *feat) for rows in plan.send_rows]
        pieces = _all_to_all(send, shapes, mesh, layer, "halo.backward")
        for rows, piece in zip(plan.send_rows, pieces, strict=True):
            grad_t.index_add_(1, rows, piece)
    return grad_t


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, plan, w, r_width, mesh, layer):
        ctx.args = (plan, w, t.shape[1], mesh, layer)
        return _halo_forward(t, plan, w, r_width, mesh, layer)

    @staticmethod
    def backward(ctx, grad):
        return _halo_backward(grad, *ctx.args), *[None] * 5


def halo_exchange(t: torch.Tensor, counts: list[int], w: int, mode: str, mesh: Mesh, layer: str = "") -> torch.Tensor:
    """This rank's token block extended by the ``w`` tokens before it (and, ``circular``, the ``w`` after it).

    t: this SP rank's token block ``[B, n_me, *feat]`` (dim 1 = tokens, ``n_me = counts[mesh.sp_rank]``);
    counts: every SP rank's token count (a ``tensor_split`` of ``N = sum(counts)``, as
    ``mesh.token_counts`` returns). Returns ``ext [B, w + n_me + R, *feat]`` with ``R = w`` for
    ``circular``, ``R = 0`` for ``causal``; ``ext[:, k] = t_global[:, (a - w + k) mod N]`` in circular
    mode (a = this rank's first global token index); in causal mode ``ext[:, k] = t_global[:, a - w + k]``
    where that index is ``>= 0``, and zeros where it is ``< 0``.

    Any w >= 1 works, also one longer than a block or than N: the halo then spans several
    ranks, and in circular mode the same token may occur in it several times (each a copy;
    their gradients add up). One ``all_to_all_single`` forward (ledger op ``halo``), its
    mirror backward (``halo.backward``): each rank sends every other rank the rows of its
    block that rank needs, in that rank's order; halo rows a rank owns itself never travel.
    """
    counts, me = [int(c) for c in counts], mesh.sp_rank
    if mode not in HALO_MODES:
        raise ValueError(f"halo_exchange: mode must be one of {HALO_MODES}, got {mode!r}")
    if not isinstance(w, int) or isinstance(w, bool) or w < 1:
        raise ValueError(f"halo_exchange: the halo width w must be a positive integer, got {w!r}")
    if len(counts) != mesh.sp or sum(counts) < 1:
        raise ValueError(f"halo_exchange: counts {counts} must hold one token count per SP rank "
                         f"(sp={mesh.sp}) and sum to N >= 1")
    if t.dim() < 2 or t.shape[1] != counts[me]:
        raise ValueError(f"halo_exchange: SP rank {me} holds a block of shape {tuple(t.shape)}, "
                         f"expected [B, {counts[me]}, ...] (counts {counts})")
    plan = _halo_plan(tuple(counts), w, mode, me, t.device)
    return _HaloExchange.apply(t, plan, w, w if mode == "circular" else 0, mesh, layer)


__all__ = ["columns_to_rows", "gather_sequence", "halo_exchange", "rows_to_columns", "shard_sequence",
           "sp_all_reduce", "split_sizes", "to_channel_layout", "to_token_layout"]
