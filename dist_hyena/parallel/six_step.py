"""Distributed FFT over token-sharded signals: the six-step (Bailey) algorithm, docs/design.md §3.3.

A signal of length L = Q·M is a Q x M matrix A[r, m] = x[r·M + m]. Rank r holds row r
(its token block of M tokens). With k = k1 + Q·k2:

    X[k1 + Q·k2] = sum_m w_M^(m·k2) · w_L^(m·k1) · sum_r A[r, m] · w_Q^(r·k1),   w_L = exp(-2πi/L)

1. rows -> columns: rank j gets the j-th piece of the m axis from every rank (real data);
2. length-Q DFT over r, times the twiddles w_L^(m·k1);
3. columns -> rows: rank r gets the rows k1 it owns, all m;
4. length-M DFT over m: rank r holds X[k1 + Q·k2] for its k1, every k2 ("scrambled" order).
``circular``: Q = P, rank r owns k1 = r. ``causal``: the zero-padded length 2N is Q = 2P
blocks, rank r plays block r (its tokens) and block P + r (zeros), and owns k1 = r and
k1 = P + r; the zero blocks never travel, and the inverse sends back only the first N
outputs (the causal convolution discards the rest). Spectra are ``[B, R, M, C]`` with
R = Q / P rows per rank; pointwise products run in this order, no reordering needed.
"""

from __future__ import annotations

import math

import torch

from ..ops import conv_length
from .mappings import columns_to_rows, rows_to_columns
from .mesh import Mesh, split_sizes


def _twiddles(q: int, m_total: int, m_start: int, m_count: int, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    """``w_L^(k1·m)`` for k1 in [0, q), this rank's m in [m_start, m_start + m_count): ``[1, q, m, 1]``."""
    length = q * m_total
    k1 = torch.arange(q, dtype=torch.int64, device=device)[:, None]
    m = torch.arange(m_start, m_start + m_count, dtype=torch.int64, device=device)[None, :]
    # Reduce k1·m mod L in integers so the angle stays accurate at any length.
    angle = (k1 * m % length).to(torch.float64) * (-2.0 * math.pi / length)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)[None, :, :, None]


def _rank_major(spec: torch.Tensor, p: int) -> torch.Tensor:
    """Rows k1 = t·P + r (t < Q/P) -> rows r·(Q/P) + t, so each rank's rows are contiguous."""
    b, q = spec.shape[:2]
    return spec.reshape(b, q // p, p, *spec.shape[2:]).transpose(1, 2).reshape(spec.shape)


def _frequency_major(spec: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`_rank_major`."""
    b, q = spec.shape[:2]
    return spec.reshape(b, p, q // p, *spec.shape[2:]).transpose(1, 2).reshape(spec.shape)


class SixStepPlan:
    """Sizes of one distributed transform: N tokens over P ranks, in ``mode``."""

    def __init__(self, n_tokens: int, mesh: Mesh, mode: str):
        p = mesh.sp
        if n_tokens % p:
            raise ValueError(
                f"sp_strategy 'fft' needs the sequence length divisible by sp: N={n_tokens} tokens, "
                f"sp={p} (N % sp = {n_tokens % p}); use sp_strategy 'channels' for uneven blocks"
            )
        self.mesh, self.n_tokens, self.p = mesh, n_tokens, p
        self.m = n_tokens // p
        self.q = conv_length(n_tokens, mode) // self.m  # P (circular) or 2P (causal) blocks
        self.r = self.q // p
        self.pieces = split_sizes(self.m, p)
        self.m_start = sum(self.pieces[: mesh.sp_rank])

    def twiddles(self, dtype, device):
        return _twiddles(self.q, self.m, self.m_start, self.pieces[self.mesh.sp_rank], dtype, device)


def _fft(t: torch.Tensor, dim: int, n: int | None = None, inverse: bool = False) -> torch.Tensor:
    """torch.fft.fft / ifft, also on an empty piece (a rank's share of the m axis is empty when N < P²), which
    MKL refuses: zeros of the transform's shape, still joined to the graph so that every rank's backward runs
    the same collectives."""
    if t.numel():
        return (torch.fft.ifft if inverse else torch.fft.fft)(t, n=n, dim=dim)
    shape = list(t.shape)
    shape[dim] = n or shape[dim]
    return t.new_zeros(shape, dtype=torch.promote_types(t.dtype, torch.complex64)) + 0 * t.sum()


def distributed_fft(x: torch.Tensor, plan: SixStepPlan, layer: str = "") -> torch.Tensor:
    """Real token block ``[B, M, C]`` -> spectrum block ``[B, R, M, C]`` in scrambled order (complex)."""
    mesh, p = plan.mesh, plan.p
    cols = rows_to_columns(x.unsqueeze(1), [1] * p, plan.pieces, mesh, layer, "fft.rows_to_columns")
    twiddles = plan.twiddles(torch.promote_types(x.dtype, torch.complex64), x.device)
    spec = _rank_major(_fft(cols, 1, n=plan.q) * twiddles, p)
    rows = columns_to_rows(spec, [plan.r] * p, plan.pieces, mesh, layer, "fft.columns_to_rows")
    return _fft(rows, 2)


def distributed_ifft(spec: torch.Tensor, plan: SixStepPlan, layer: str = "") -> torch.Tensor:
    """Spectrum block ``[B, R, M, C]`` (scrambled) -> the real part of the inverse transform's first N
    samples, as this rank's token block ``[B, M, C]`` (scaled by 1/L like ``torch.fft.ifft``)."""
    mesh, p = plan.mesh, plan.p
    rows = _fft(spec, 2, inverse=True)
    cols = rows_to_columns(rows, [plan.r] * p, plan.pieces, mesh, layer, "ifft.rows_to_columns")
    cols = _frequency_major(cols, p) * plan.twiddles(spec.dtype, spec.device).conj()
    # Only the first P blocks are wanted (causal keeps outputs < N), and only their real part.
    signal = _fft(cols, 1, inverse=True)[:, :p].real
    return columns_to_rows(signal, [1] * p, plan.pieces, mesh, layer, "ifft.columns_to_rows").squeeze(1)
