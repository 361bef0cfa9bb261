"""The paper's linear baseline (its n-body table: "Linear", MSE 0.0322): an equivariant linear map.

``LinearBaseline`` has no blocks and no token mixing beyond token means. With x_i the centred position channel(s)
and v_i the other (translation-invariant) vector channels of token i, each output vector is

    x_out_i = x_i[pos0] + Σ_c a_c · x_i[c] + Σ_c b_c · mean_j x_j[c]          (n-body head, + centroid)
    x_out   = Σ_c b_c · mean_j x_j[c]                                          (recall head)

with learned scalars a, b per output channel: linear in the input vectors, equivariant to rotations (scalar
coefficients), translations (positions are centred, the centroid added back) and token permutations. The mean
of a centred position is zero, so its b term is dropped. Scalar inputs cannot enter a map that is both linear and
rotation-equivariant; the scalar outputs are zeros. ``mixer="linear"`` in ``HyenaConfig`` selects it through
:func:`build_model`, which is how the trainer builds every model.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_hyena.config import HyenaConfig
from dist_hyena.model import SE3HyenaModel, subtract_centroid


class LinearBaseline(nn.Module):
    """``forward(x [B, N, vector_in, 3], f [B, N, scalar_in])`` -> the outputs of ``SE3HyenaModel`` (same shapes)."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        if cfg.vector_in < 1:
            raise ValueError("LinearBaseline maps input vectors: HyenaConfig.vector_in must be >= 1")
        self.cfg = cfg
        self.token_weight = nn.Parameter(torch.zeros(cfg.vector_out, cfg.vector_in))  # a: x_i[c] -> output
        self.mean_weight = nn.Parameter(torch.zeros(cfg.vector_out, cfg.vector_in))  # b: mean_j x_j[c] -> output
        mask = torch.ones(cfg.vector_in)
        mask[list(cfg.position_channels)] = 0.0  # the mean of a centred position is zero: no parameter for it
        self.register_buffer("mean_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        pos = list(cfg.position_channels)
        centroid = x[:, :, pos].sum(dim=1, dtype=torch.float64) / x.shape[1] if pos else None  # [B, P, 3]
        if pos:
            x = subtract_centroid(x, pos, centroid)
        mean = x.mean(dim=1, keepdim=True)  # [B, 1, C, 3]
        from_mean = torch.einsum("oc,bncd->bnod", self.mean_weight * self.mean_mask, mean)
        if cfg.head == "recall":
            return from_mean[:, 0], x.new_zeros(x.shape[0], cfg.scalar_out)
        update = torch.einsum("oc,bncd->bnod", self.token_weight, x) + from_mean
        out = (x[:, :, pos[0], None] + update).double() + centroid[:, None, :1]
        return out.to(x.dtype), x.new_zeros(*x.shape[:2], cfg.scalar_out)


def build_model(cfg: HyenaConfig, mesh=None) -> nn.Module:
    """The model ``cfg`` describes: ``LinearBaseline`` for ``mixer="linear"``, else ``SE3HyenaModel``."""
    if cfg.mixer == "linear":
        if mesh is not None and mesh.sp > 1:
            raise ValueError("mixer='linear' is a one-process baseline; sequence parallelism needs mixer='hyena'")
        return LinearBaseline(cfg)
    return SE3HyenaModel(cfg, mesh=mesh)
