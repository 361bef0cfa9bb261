"""The paper's equivariant vector attention (docs/design.md §2.2): the O(N²) baseline that can stand in
for the long convolution inside the same block.

    C_ij = q_i x k_j,   S_ij = softmax_j(|C_ij| / sqrt(N)) C_ij,   u_i = (1/N) sum_j S_ij x v_j

per vector channel; the scalar stream uses plain softmax attention. Everything is
materialised as ``[B, N, N, ...]``: that cost is what the baseline is there to show.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ops import CONV_MODES


def _is_causal(mode: str) -> bool:
    if mode not in CONV_MODES:
        raise ValueError(f"attention mode must be one of {CONV_MODES}, got {mode!r}")
    return mode == "causal"


class VectorAttention(nn.Module):
    """A mixer of the operator (``dist_hyena.model``, "Mixers"), one process; ``counts`` is not needed."""

    def __init__(self, mode: str = "circular"):
        super().__init__()
        self.causal = _is_causal(mode)

    def forward(self, q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, counts=None):
        """``q/k/v_eqv`` ``[B, N, C, 3]``, ``q/k/v_inv`` ``[B, N, D]`` -> ``(u_eqv [B, N, C, 3], u_inv [B, N, D])``."""
        n = q_eqv.shape[1]
        mask = None
        if self.causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=q_eqv.device).tril()
        cross = torch.linalg.cross(q_eqv[:, :, None], k_eqv[:, None, :], dim=-1)  # [B, N, N, C, 3]
        logits = cross.norm(dim=-1) / math.sqrt(n)  # [B, N, N, C]
        if mask is not None:
            logits = logits.masked_fill(~mask[None, :, :, None], float("-inf"))
        weights = torch.softmax(logits, dim=2)[..., None] * cross
        u_eqv = torch.linalg.cross(weights, v_eqv[:, None].expand_as(weights), dim=-1).sum(2) / n

        scores = torch.einsum("bid,bjd->bij", q_inv, k_inv) / math.sqrt(q_inv.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        u_inv = torch.einsum("bij,bjd->bid", torch.softmax(scores, dim=-1), v_inv)
        return u_eqv, u_inv


class DistanceAttention(nn.Module):
    """A stronger baseline (docs/design.md §2.2): attention on invariant distances, by
    ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels, never an N x N
    matrix in memory).

        logit_ij = (q_inv_i . k_inv_j - sum_c |q_eqv_ic - k_eqv_jc|^2) / sqrt(D + 3C)
        u_eqv_i = sum_j softmax_j(logit_ij) v_eqv_j,   u_inv_i = sum_j softmax_j(logit_ij) v_inv_j

    The logits are rotation-invariant, so u_eqv rotates with v_eqv. The distance expands as
    -|q|^2 + 2 q.k - |k|^2; the -|q_i|^2 term is the same for every j and cancels in the softmax, so the
    logits are one dot product of augmented rows [q_inv, 2 q_eqv, 1] . [k_inv, k_eqv, -|k_eqv|^2].
    A mixer of the operator like every other (``dist_hyena.model``, "Mixers"); one process.
    """

    def __init__(self, mode: str = "circular"):
        super().__init__()
        self.causal = _is_causal(mode)

    def forward(self, q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, counts=None):
        """``q/k/v_eqv`` ``[B, N, C, 3]``, ``q/k/v_inv`` ``[B, N, D]`` -> ``(u_eqv [B, N, C, 3], u_inv [B, N, D])``."""
        b, n, c, _ = q_eqv.shape
        d = q_inv.shape[-1]
        q_vec, k_vec = q_eqv.flatten(2), k_eqv.flatten(2)
        query = torch.cat([q_inv, 2 * q_vec, q_vec.new_ones(b, n, 1)], dim=-1)
        key = torch.cat([k_inv, k_vec, -k_vec.pow(2).sum(-1, keepdim=True)], dim=-1)
        # A zero column gives the values the query's head dim: the fused (flash) kernels need equal dims and
        # otherwise PyTorch falls back to the math path, which does materialise N x N.
        value = torch.cat([v_inv, v_eqv.flatten(2), v_inv.new_zeros(b, n, 1)], dim=-1)
        out = nn.functional.scaled_dot_product_attention(
            query[:, None], key[:, None], value[:, None], is_causal=self.causal, scale=1 / math.sqrt(d + 3 * c)
        )[:, 0]  # one head: [B, N, D + 3C + 1]
        return out[..., d : d + 3 * c].unflatten(-1, (c, 3)), out[..., :d]
