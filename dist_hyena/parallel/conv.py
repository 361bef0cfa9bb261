"""Sequence-parallel long convolution: the local FFT convolutions of ``dist_hyena.ops``, distributed.

Two strategies (docs/design.md §3.2, §3.3), both exact:
- ``channels`` (DeepSpeed-Ulysses style): switch the packed conv inputs to channel layout,
  run the unchanged local ``cross_conv`` / ``circular_conv`` over all N tokens of this
  rank's channel groups, switch back. Any N; needs at least P channel groups.
- ``fft``: the six-step distributed FFT; spectra are multiplied in scrambled order. Any
  channel count (the paper's single vector channel); needs N divisible by P.
``auto`` picks ``channels`` when there are at least P channel groups, else ``fft``.

A channel group is what must stay on one rank: a vector channel's q and k (2 x 3
components, 6 numbers a token) or a scalar channel's q and k (2 numbers a token).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import CONV_MODES, circular_conv, cross_conv, spectral_cross
from .mappings import to_channel_layout, to_token_layout
from .mesh import Mesh
from .six_step import SixStepPlan, distributed_fft, distributed_ifft

STRATEGIES = ("auto", "channels", "fft")
# Cost of a channel group, in packed numbers a token and in FFTs: a vector channel is three scalars.
VECTOR_WEIGHT, SCALAR_WEIGHT = 3, 1


def resolve_strategy(strategy: str, n_groups: int, sp: int) -> str:
    """``auto`` -> ``channels`` if there are at least ``sp`` channel groups, else ``fft``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"sp_strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return "channels" if n_groups >= sp else "fft"
    if strategy == "channels" and n_groups < sp:
        raise ValueError(
            f"sp_strategy 'channels' needs at least sp={sp} channel groups, the model has {n_groups} "
            "(vector + scalar channels); use sp_strategy 'fft' or 'auto'"
        )
    return strategy


def packed_widths(partition: list[tuple[range, range]]) -> tuple[list[int], list[int]]:
    """Numbers a token that each part of a :func:`channel_partition` receives in channel layout (q and k: 2 x 3
    for a vector channel, 2 for a scalar one) and sends back (u: 3 and 1)."""
    widths_out = [VECTOR_WEIGHT * len(v) + SCALAR_WEIGHT * len(s) for v, s in partition]
    return [2 * w for w in widths_out], widths_out


def channel_partition(n_vector: int, n_scalar: int, parts: int) -> list[tuple[range, range]]:
    """Split the groups [vector 0..Cv-1, scalar 0..D-1] into ``parts`` contiguous non-empty runs,
    minimising the heaviest run (vector weight 3, scalar 1). Returns ``(vector range, scalar range)``
    per part. Contiguity keeps every part one slice of the packed channels.
    """
    weights = [VECTOR_WEIGHT] * n_vector + [SCALAR_WEIGHT] * n_scalar
    g = len(weights)
    if g < parts:
        raise ValueError(f"cannot spread {g} channel groups over {parts} ranks")
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    # best[k][i]: the least possible heaviest run when the first i groups form k runs.
    inf = float("inf")
    best = [[inf] * (g + 1) for _ in range(parts + 1)]
    cut = [[0] * (g + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(k, g - (parts - k) + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    bounds = [g]
    for k in range(parts, 0, -1):
        bounds.append(cut[k][bounds[-1]])
    bounds.reverse()
    runs = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        vec = range(min(lo, n_vector), min(hi, n_vector))
        runs.append((vec, range(max(lo, n_vector) - n_vector, max(hi, n_vector) - n_vector)))
    return runs


class SequenceParallelConv(nn.Module):
    """The global convolutions of one Hyena operator on this rank's token block (no parameters).

    forward(q_eqv ``[B, n, Cv, 3]``, k_eqv ``[B, n, Cv, 3]``, q_inv ``[B, n, D]``, k_inv ``[B, n, D]``,
    counts=None) -> (u_eqv ``[B, n, Cv, 3]``, u_inv ``[B, n, D]``): ``cross_conv`` / ``circular_conv`` of the
    whole sequence, restricted to this rank's block of n tokens. ``counts``: every rank's token count, as the
    model knows them once per forward; when not given, asked of the mesh (one blocking all-reduce).
    """

    def __init__(self, mesh: Mesh, n_vector: int, n_scalar: int, mode: str = "circular",
                 strategy: str = "auto"):
        super().__init__()
        if mode not in CONV_MODES:
            raise ValueError(f"conv mode must be one of {CONV_MODES}, got {mode!r}")
        if n_vector < 0 or n_scalar < 0 or n_vector + n_scalar == 0:
            raise ValueError(f"need channels to convolve, got n_vector={n_vector}, n_scalar={n_scalar}")
        self.mesh, self.n_vector, self.n_scalar, self.mode = mesh, n_vector, n_scalar, mode
        self.strategy = resolve_strategy(strategy, n_vector + n_scalar, mesh.sp)
        self.ledger_name = "conv"  # renamed to its place in the model by ledger.name_layers
        if self.strategy == "channels":
            self.partition = channel_partition(n_vector, n_scalar, mesh.sp)

    def extra_repr(self) -> str:
        return f"sp={self.mesh.sp}, strategy={self.strategy}, mode={self.mode}"

    def forward(self, q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, counts: list[int] | None = None):
        """A mixer of the operator (``dist_hyena.model``, "Mixers"): the values are left to the operator."""
        b, n = q_eqv.shape[:2]
        cv, d = self.n_vector, self.n_scalar
        for name, t, shape in (("q_eqv", q_eqv, (b, n, cv, 3)), ("k_eqv", k_eqv, (b, n, cv, 3)),
                               ("q_inv", q_inv, (b, n, d)), ("k_inv", k_inv, (b, n, d))):
            if tuple(t.shape) != shape:
                raise ValueError(f"SequenceParallelConv: {name} must be {list(shape)}, got {list(t.shape)}")
        if counts is None:
            counts = self.mesh.token_counts(n, device=q_eqv.device, layer=self.ledger_name)
        elif len(counts) != self.mesh.sp or counts[self.mesh.sp_rank] != n:
            raise ValueError(f"SequenceParallelConv: token counts {counts} do not give this rank "
                             f"(sp_rank {self.mesh.sp_rank} of {self.mesh.sp}) its {n} tokens")
        if self.strategy == "channels":
            u = self._channels(q_eqv, k_eqv, q_inv, k_inv, counts)
        else:
            u = self._fft(q_eqv, k_eqv, q_inv, k_inv, sum(counts))
        return u[..., : 3 * cv].unflatten(-1, (cv, 3)), u[..., 3 * cv:]

    def _channels(self, q_eqv, k_eqv, q_inv, k_inv, counts):
        """Layout switch, the local ops on full-length channel groups, switch back: ``[B, n, 3Cv + D]``."""
        vec_qk = torch.cat([q_eqv, k_eqv], -1).flatten(2)  # per vector channel: q (3), k (3)
        packed = torch.cat([vec_qk, torch.stack([q_inv, k_inv], -1).flatten(2)], -1)
        widths_in, widths_out = packed_widths(self.partition)
        vec, sca = self.partition[self.mesh.sp_rank]
        full = to_channel_layout(packed, counts, widths_in, self.mesh, self.ledger_name)  # [B, N, w_in]
        vec_in = full[..., : 6 * len(vec)].unflatten(-1, (len(vec), 6))
        sca_in = full[..., 6 * len(vec):].unflatten(-1, (len(sca), 2))
        u = []
        if len(vec):
            u.append(cross_conv(vec_in[..., :3], vec_in[..., 3:], self.mode).flatten(2))
        if len(sca):
            u.append(circular_conv(sca_in[..., 0], sca_in[..., 1], self.mode))
        return to_token_layout(torch.cat(u, -1), counts, widths_out, self.mesh, self.ledger_name)

    def _fft(self, q_eqv, k_eqv, q_inv, k_inv, n_tokens):
        """Distributed spectra of all q and k channels at once, products in scrambled order.

        Returns ``[B, n, 3Cv + D]``."""
        plan = SixStepPlan(n_tokens, self.mesh, self.mode)
        cv = self.n_vector
        # torch.fft has no half-precision path on every device
        dt = torch.promote_types(q_eqv.dtype, torch.float32)
        packed = torch.cat([q_eqv.flatten(2), k_eqv.flatten(2), q_inv, k_inv], -1).to(dt)
        spec = distributed_fft(packed, plan, self.ledger_name)  # [B, R, M, 2(3Cv + D)]
        sq_v, sk_v, sq_s, sk_s = spec.split([3 * cv, 3 * cv, self.n_scalar, self.n_scalar], -1)
        cross = spectral_cross(sq_v.unflatten(-1, (cv, 3)), sk_v.unflatten(-1, (cv, 3))).flatten(-2)
        prod = torch.cat([cross, sq_s * sk_s], -1)
        return (distributed_ifft(prod, plan, self.ledger_name) / n_tokens).to(q_eqv.dtype)
