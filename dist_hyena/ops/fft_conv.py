"""FFT long convolutions along the token dim, 1/N scaled.

Scalar:  u_i = (1/N) sum_j q_j k_{(i-j) mod N}                 (circular_conv)
Vector:  u_i = (1/N) sum_j q_j x k_{(i-j) mod N}  (cross product)  (cross_conv)

The cross product is bilinear with constant coefficients, so the spectrum of the vector
convolution is the per-frequency complex cross product of the two spectra: 3 + 3 forward
and 3 inverse real FFTs per vector channel. ``causal`` mode zero-pads to 2N, which turns
the circular convolution into the linear one: u_i then depends on j <= i only.
FFTs run in at least float32 (torch.fft has no half-precision path on every device).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CONV_MODES = ("circular", "causal")


def conv_length(n_tokens: int, mode: str) -> int:
    """FFT length for a convolution over ``n_tokens`` in ``mode``."""
    if mode not in CONV_MODES:
        raise ValueError(f"conv mode must be one of {CONV_MODES}, got {mode!r}")
    return n_tokens if mode == "circular" else 2 * n_tokens


def _fft_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _cross_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out = a x b`` over the last dim, written component by component into ``out`` (no temporaries:
    one multiply into the output component, one fused multiply-subtract in place)."""
    a1, a2, a3 = a.unbind(-1)
    b1, b2, b3 = b.unbind(-1)
    o1, o2, o3 = out.unbind(-1)
    for o, x, y, z, w in ((o1, a2, b3, a3, b2), (o2, a3, b1, a1, b3), (o3, a1, b2, a2, b1)):
        torch.mul(x, y, out=o)
        o.addcmul_(z, w, value=-1)
    return out


class _SpectralCross(torch.autograd.Function):
    """The per-frequency cross product as one autograd node: the forward writes the three components
    straight into the result, and backward is two more cross products (of the conjugates, for complex
    inputs: d(a x b) = da x b + a x db, and the adjoint of v -> v x b is g -> conj(b) x g)."""

    @staticmethod
    def forward(ctx, a, b):
        if ctx is not None:
            ctx.save_for_backward(a, b)
        shape = torch.broadcast_shapes(a.shape, b.shape)
        # empty_like keeps the operand's strides: torch.fft returns the transformed dim innermost, so each
        # component of the result is then one contiguous run, and the inverse FFT reads it in that order.
        out = torch.empty_like(a.expand(shape), dtype=torch.promote_types(a.dtype, b.dtype))
        return _cross_into(out, a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = spectral_cross(b.conj(), grad).sum_to_size(a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = spectral_cross(grad, a.conj()).sum_to_size(b.shape)
        return grad_a, grad_b


def spectral_cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the last dim (size 3) of complex (or real) tensors, no conjugation."""
    if a.shape[-1] != 3 or b.shape[-1] != 3:
        raise ValueError(f"spectral_cross needs 3-vectors in the last dim, got {tuple(a.shape)} and {tuple(b.shape)}")
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _SpectralCross.apply(a, b)
    return _SpectralCross.forward(None, a, b)


def _check(q: torch.Tensor, k: torch.Tensor, vector: bool) -> None:
    want = 4 if vector else 3
    name = "cross_conv" if vector else "circular_conv"
    layout = "[B, N, C, 3]" if vector else "[B, N, D]"
    if q.dim() != want or q.shape != k.shape:
        raise ValueError(f"{name} expects q and k of equal shape {layout}, got {tuple(q.shape)} and {tuple(k.shape)}")
    if vector and q.shape[-1] != 3:
        raise ValueError(f"cross_conv needs 3-vectors in the last dim, got size {q.shape[-1]}")
    if not (q.is_floating_point() and k.is_floating_point()):
        raise TypeError(f"{name} needs floating-point inputs, got {q.dtype} and {k.dtype}")


def _compact(u: torch.Tensor, n: int, scale: int) -> torch.Tensor:
    """The first ``n`` tokens of a length-``scale * n`` inverse transform, times ``scale`` (1: as is)."""
    return u if scale == 1 else u[:, :n] * scale


class _FFTConv(torch.autograd.Function):
    """u = (1/N) sum_j q_j (*) k_(i-j) by FFT, (*) the product (elementwise, or the cross product of 3-vectors).

    Scaling: with Q = rfft(q)/L and K = rfft(k)/L (``norm="forward"``, the scale applied inside the FFT),
    u = (L/N) * irfft(Q (*) K, norm="forward"); L/N is 1 in circular mode, so no pass of its own, and 2 in
    causal mode, applied by the copy that keeps the first N of the 2N outputs.

    Backward, by hand rather than through autograd's FFT backwards (which run full-length complex FFTs):
    with G = rfft(g) (unscaled), grad_q = (L/N) irfft(conj(K) (*) G) and grad_k = (L/N) irfft(G (*) conj(Q)),
    the correlations that are the adjoints of the convolution: one forward and two inverse real FFTs.
    Keeps the two spectra for backward, as autograd did.
    """

    @staticmethod
    def forward(ctx, q, k, length: int, vector: bool):
        n = q.shape[1]
        spec_q = torch.fft.rfft(q, n=length, dim=1, norm="forward")
        spec_k = torch.fft.rfft(k, n=length, dim=1, norm="forward")
        if vector:  # inside this node already: the product itself, without an autograd node of its own
            prod = _cross_into(torch.empty_like(spec_q), spec_q, spec_k)
        else:  # without autograd q's spectrum is not needed again: multiply in place
            prod = spec_q * spec_k if ctx is not None else spec_q.mul_(spec_k)
        if ctx is not None:
            ctx.save_for_backward(spec_q, spec_k)
            ctx.n, ctx.length, ctx.vector = n, length, vector
        return _compact(torch.fft.irfft(prod, n=length, dim=1, norm="forward"), n, length // n)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        spec_q, spec_k = ctx.saved_tensors
        n, length, vector = ctx.n, ctx.length, ctx.vector
        spec_g = torch.fft.rfft(grad.to(spec_q.real.dtype), n=length, dim=1)
        grad_q = grad_k = None
        if ctx.needs_input_grad[0]:
            prod = _cross_into(torch.empty_like(spec_g), spec_k.conj(), spec_g) if vector else spec_g * spec_k.conj()
            grad_q = _compact(torch.fft.irfft(prod, n=length, dim=1), n, length // n)
        if ctx.needs_input_grad[1]:
            prod = _cross_into(torch.empty_like(spec_g), spec_g, spec_q.conj()) if vector else spec_g * spec_q.conj()
            grad_k = _compact(torch.fft.irfft(prod, n=length, dim=1), n, length // n)
        return grad_q, grad_k, None, None


def _fft_conv(q: torch.Tensor, k: torch.Tensor, mode: str, vector: bool) -> torch.Tensor:
    _check(q, k, vector=vector)
    length = conv_length(q.shape[1], mode)
    dt = _fft_dtype(q)
    qt, kt = q.to(dt), k.to(dt)
    if torch.is_grad_enabled() and (qt.requires_grad or kt.requires_grad):
        u = _FFTConv.apply(qt, kt, length, vector)
    else:
        u = _FFTConv.forward(None, qt, kt, length, vector)
    return u.to(q.dtype)


def circular_conv(q: torch.Tensor, k: torch.Tensor, mode: str = "circular") -> torch.Tensor:
    """``q, k`` ``[B, N, D]`` -> ``u`` ``[B, N, D]``, per-channel convolution over tokens, 1/N scaled."""
    return _fft_conv(q, k, mode, vector=False)


def cross_conv(q: torch.Tensor, k: torch.Tensor, mode: str = "circular") -> torch.Tensor:
    """``q, k`` ``[B, N, C, 3]`` -> ``u`` ``[B, N, C, 3]``, u_i = (1/N) sum_j q_j x k_(i-j), per channel."""
    return _fft_conv(q, k, mode, vector=True)
