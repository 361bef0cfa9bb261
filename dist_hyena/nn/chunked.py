"""Chunked recompute: a map over a long token dim whose activations never span the whole sequence.

``chunked(fn, chunk, inputs, params, dim, halo)`` computes ``fn`` over chunks of ``chunk`` output positions along
``dim``. Output positions ``[s, e)`` read input positions ``[s, e + halo)``: ``halo = 0`` for a token-wise map (the
MLPs), ``halo > 0`` for a short convolution over a neighbour-extended input (the local context). The outputs are
written into preallocated tensors (no list of chunks to concatenate). Under autograd only the inputs are kept for
backward; backward recomputes one chunk at a time and backpropagates through it alone, accumulating the input
gradients of overlapping halos into one preallocated tensor and the parameter gradients into one per parameter.
Exact: each output position depends only on its input window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tensors = tuple[torch.Tensor, ...]
ChunkFn = Callable[..., Tensors]  # fn(start, *input_windows) -> outputs for positions [start, start + c)


def _spans(n: int, chunk: int):
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk) - s


def _map_chunks(fn: ChunkFn, chunk: int, inputs: Tensors, dim: int, halo: int) -> Tensors:
    n = inputs[0].shape[dim] - halo
    outs: Tensors = ()
    for s, c in _spans(n, chunk):  # detached windows: no autograd here (a no-grad view would still claim it)
        part = fn(s, *(t.narrow(dim, s, c + halo).detach() for t in inputs))
        if not outs:
            outs = tuple(p.new_empty(*p.shape[:dim], n, *p.shape[dim + 1 :]) for p in part)
        for o, p in zip(outs, part, strict=True):
            o.narrow(dim, s, c).copy_(p)
    return outs


class _ChunkedRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, chunk, dim, halo, n_inputs, *args):
        inputs, ctx.params = args[:n_inputs], args[n_inputs:]
        ctx.fn, ctx.chunk, ctx.dim, ctx.halo = fn, chunk, dim, halo
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return _map_chunks(fn, chunk, inputs, dim, halo)

    @staticmethod
    def backward(ctx, *grads):
        inputs, dim, halo = ctx.saved_tensors, ctx.dim, ctx.halo
        params = [p for p in ctx.params if p.requires_grad]
        # Windows overlap by the halo, so their input gradients add up; without a halo each position is written once.
        grad_inputs = [torch.zeros_like(t) if halo else torch.empty_like(t) for t in inputs]
        grad_params = [torch.zeros_like(p) for p in params]
        for s, c in _spans(inputs[0].shape[dim] - halo, ctx.chunk):
            with torch.enable_grad():
                part_in = [t.narrow(dim, s, c + halo).detach().requires_grad_() for t in inputs]
                # fn gets non-leaf aliases: hooks on a module's inputs (torch's ModuleTracker, as FlopCounterMode
                # runs it) cannot take leaves inside autograd.grad
                part_out = ctx.fn(s, *(t.view_as(t) for t in part_in))
                wanted = [(o, g.narrow(dim, s, c)) for o, g in zip(part_out, grads, strict=True) if o.requires_grad]
                got = torch.autograd.grad([o for o, _ in wanted], [*part_in, *params], [g for _, g in wanted],
                                          allow_unused=True)
            for acc, g in zip(grad_inputs, got[: len(inputs)], strict=True):
                window = acc.narrow(dim, s, c + halo)
                if g is None:
                    if not halo:
                        window.zero_()
                elif halo:
                    window.add_(g)
                else:
                    window.copy_(g)
            for acc, g in zip(grad_params, got[len(inputs) :], strict=True):
                if g is not None:
                    acc += g
        all_params = iter(grad_params)
        by_param = [next(all_params) if p.requires_grad else None for p in ctx.params]
        return (None, None, None, None, None, *grad_inputs, *by_param)


def chunked(fn: ChunkFn, chunk: int, inputs: Sequence[torch.Tensor], params: Sequence[torch.Tensor] = (),
            dim: int = 0, halo: int = 0) -> Tensors:
    """``fn`` over chunks of ``chunk`` output positions of ``dim`` (module docstring); ``params``: the parameters
    ``fn`` uses (their gradients come from the recompute)."""
    inputs = tuple(inputs)
    if torch.is_grad_enabled():
        return _ChunkedRecompute.apply(fn, chunk, dim, halo, len(inputs), *inputs, *params)
    return _map_chunks(fn, chunk, inputs, dim, halo)
