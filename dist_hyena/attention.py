"""The paper's equivariant vector attention (DESIGN §2.2): the O(N²) baseline that can stand in
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


class VectorAttention(nn.Module):
    def __init__(self, mode: str = "circular"):
        super().__init__()
        if mode not in CONV_MODES:
            raise ValueError(f"attention mode must be one of {CONV_MODES}, got {mode!r}")
        self.causal = mode == "causal"

    def forward(self, q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv):
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
