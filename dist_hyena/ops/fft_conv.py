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
        ctx.save_for_backward(a, b)
        shape = torch.broadcast_shapes(a.shape, b.shape)
        return _cross_into(torch.empty(shape, dtype=torch.promote_types(a.dtype, b.dtype), device=a.device), a, b)

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
    return _SpectralCross.apply(a, b)


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


def circular_conv(q: torch.Tensor, k: torch.Tensor, mode: str = "circular") -> torch.Tensor:
    """``q, k`` ``[B, N, D]`` -> ``u`` ``[B, N, D]``, per-channel convolution over tokens, 1/N scaled."""
    _check(q, k, vector=False)
    n = q.shape[1]
    length = conv_length(n, mode)
    dt = _fft_dtype(q)
    spec = torch.fft.rfft(q.to(dt), n=length, dim=1) * torch.fft.rfft(k.to(dt), n=length, dim=1)
    return (torch.fft.irfft(spec, n=length, dim=1)[:, :n] / n).to(q.dtype)


def cross_conv(q: torch.Tensor, k: torch.Tensor, mode: str = "circular") -> torch.Tensor:
    """``q, k`` ``[B, N, C, 3]`` -> ``u`` ``[B, N, C, 3]``, u_i = (1/N) sum_j q_j x k_(i-j), per channel."""
    _check(q, k, vector=True)
    n = q.shape[1]
    length = conv_length(n, mode)
    dt = _fft_dtype(q)
    # irfft(rfft(q) * rfft(k)) is the unscaled sum; norm="forward" puts 1/length on q's spectrum inside the
    # FFT itself. That is the 1/N of circular mode with no pass of its own; causal mode (length 2N) needs a
    # factor 2 on its first N outputs, applied by the copy that compacts them.
    spec = spectral_cross(torch.fft.rfft(q.to(dt), n=length, dim=1, norm="forward"),
                          torch.fft.rfft(k.to(dt), n=length, dim=1))
    u = torch.fft.irfft(spec, n=length, dim=1)
    u = u if length == n else u[:, :n] * 2
    return u.to(q.dtype)
