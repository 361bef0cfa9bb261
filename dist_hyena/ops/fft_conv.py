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


def spectral_cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the last dim (size 3) of complex (or real) tensors, no conjugation."""
    a1, a2, a3 = a.unbind(-1)
    b1, b2, b3 = b.unbind(-1)
    return torch.stack([a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1], dim=-1)


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
    spec = spectral_cross(torch.fft.rfft(q.to(dt), n=length, dim=1), torch.fft.rfft(k.to(dt), n=length, dim=1))
    return (torch.fft.irfft(spec, n=length, dim=1)[:, :n] / n).to(q.dtype)
