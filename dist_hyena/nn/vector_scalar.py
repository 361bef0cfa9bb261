"""Token-wise maps between compact vector/scalar features, computed through Clifford multivectors.

The model's residual stream is vectors ``[..., C, 3]`` and scalars ``[..., S]``: C*3 + S numbers per
token. A multivector holding them is ``[..., C + S, 8]``, most of it zeros, and a Clifford MLP's hidden
layers are wider still. :class:`VectorScalarMLP` embeds, runs a :class:`CliffordMLP` and reads the
result inside one call, so with ``token_chunk`` set only compact features ever span the whole sequence:
the multivectors exist ``token_chunk`` tokens at a time, in the forward and in the recompute of backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .algebra import embed, read
from .clifford import CliffordMLP

Tensors = tuple[torch.Tensor, ...]


def _rows(t: torch.Tensor, lead: int) -> torch.Tensor:
    """Merge the ``lead`` leading (batch, token) dims into one row dim."""
    return t.reshape(-1, *t.shape[lead:])


def _map_chunks(fn: Callable[..., Tensors], chunk: int, inputs: Tensors) -> Tensors:
    """fn over row chunks of ``inputs``, written into preallocated outputs (no list of chunks to concatenate)."""
    n = inputs[0].shape[0]
    outs: Tensors = ()
    for s in range(0, n, chunk):
        part = fn(*(t[s : s + chunk] for t in inputs))
        if not outs:
            outs = tuple(p.new_empty(n, *p.shape[1:]) for p in part)
        for o, p in zip(outs, part, strict=True):
            o[s : s + chunk] = p
    return outs


class _TokenChunkedRecompute(torch.autograd.Function):
    """outputs = fn(*inputs) for a token-wise ``fn`` over row tensors, keeping only the inputs for backward:
    backward recomputes ``fn`` one chunk of rows at a time and backpropagates through that chunk alone, so
    the activations alive at any moment are those of ``chunk`` rows. Exact: each row's outputs depend on
    that row's inputs only."""

    @staticmethod
    def forward(ctx, fn, chunk, n_inputs, *args):
        inputs, ctx.params = args[:n_inputs], args[n_inputs:]
        ctx.fn, ctx.chunk = fn, chunk
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return _map_chunks(fn, chunk, inputs)

    @staticmethod
    def backward(ctx, *grads):
        inputs = ctx.saved_tensors
        params = [p for p in ctx.params if p.requires_grad]
        grad_inputs = [torch.empty_like(t) for t in inputs]
        grad_params = [torch.zeros_like(p) for p in params]
        for s in range(0, inputs[0].shape[0], ctx.chunk):
            with torch.enable_grad():
                part_in = [t[s : s + ctx.chunk].detach().requires_grad_() for t in inputs]
                part_out = ctx.fn(*part_in)
                wanted = [(o, g[s : s + ctx.chunk]) for o, g in zip(part_out, grads, strict=True)
                          if o.requires_grad]
                got = torch.autograd.grad([o for o, _ in wanted], [*part_in, *params],
                                          [g for _, g in wanted], allow_unused=True)
            for acc, g in zip(grad_inputs, got[: len(inputs)], strict=True):
                acc[s : s + ctx.chunk] = 0 if g is None else g
            for acc, g in zip(grad_params, got[len(inputs) :], strict=True):
                if g is not None:
                    acc += g
        all_params = iter(grad_params)
        by_param = [next(all_params) if p.requires_grad else None for p in ctx.params]
        return (None, None, None, *grad_inputs, *by_param)


class VectorScalarMLP(nn.Module):
    """(vectors ``[..., vectors_in, 3]``, scalars ``[..., scalars_in]``) -> (vectors ``[..., vectors_out, 3]``,
    scalars ``[..., scalars_out]``): embed as multivectors, a :class:`CliffordMLP`, read the first channels'
    vector part and the next channels' scalar part. O(3)-equivariant as the MLP is. ``options``: CliffordMLP's.

    ``token_chunk`` (default None) bounds memory on long sequences: the map runs ``token_chunk`` tokens at a
    time, and under autograd backward keeps only the compact inputs and recomputes each chunk (about one
    extra forward), so no multivector or hidden activation spans the whole sequence.
    """

    token_chunk: int | None = None

    def __init__(self, vectors_in: int, scalars_in: int, vectors_out: int, scalars_out: int, hidden: int,
                 n_layers: int = 1, **options):
        super().__init__()
        self.vectors_out, self.scalars_out = vectors_out, scalars_out
        self.mlp = CliffordMLP(vectors_in + scalars_in, vectors_out + scalars_out, hidden, n_layers, **options)

    def _map(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return read(self.mlp(embed(x, f)), self.vectors_out, self.scalars_out)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.token_chunk is None:
            return self._map(x, f)
        lead = x.shape[:-2]
        rows = (_rows(x, len(lead)), _rows(f, len(lead)))
        if torch.is_grad_enabled():
            params = tuple(self.parameters())
            out = _TokenChunkedRecompute.apply(self._map, self.token_chunk, len(rows), *rows, *params)
        else:
            out = _map_chunks(self._map, self.token_chunk, rows)
        return out[0].view(*lead, *out[0].shape[1:]), out[1].view(*lead, *out[1].shape[1:])
