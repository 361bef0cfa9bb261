"""O(3)-equivariant layers on Cl(3,0) multivectors (after Ruhe et al., 2023).

Every layer maps ``[..., channels, 8]`` to ``[..., channels', 8]`` and commutes with the
action of any orthogonal map on the blades (see ``algebra.orthogonal_action``): weights
only ever mix channels within one grade, and nonlinearities are driven by invariants.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import algebra

_EPS = 1e-6


def _smooth_norm(x: torch.Tensor, dim) -> torch.Tensor:
    """Euclidean norm that is differentiable at zero."""
    return torch.sqrt(x.pow(2).sum(dim=dim) + _EPS**2)


class CliffordLinear(nn.Module):
    """y[o, b] = sum_i W[o, i, grade(b)] x[i, b], plus a bias on the scalar blade."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, algebra.N_GRADES) / math.sqrt(in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("grades", algebra.grade_index(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("...ib,oib->...ob", x, self.weight[:, :, self.grades])
        if self.bias is not None:
            y = torch.cat([y[..., :1] + self.bias[:, None], y[..., 1:]], dim=-1)
        return y


def _product_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse form of the Cayley table: for output blade k and left blade i, the single right
    blade j with blade_i * blade_j ∝ blade_k, its sign, and the grade path (g_i, g_j, g_k)."""
    table = algebra.cayley_table(torch.float64)
    partner = table.abs().argmax(dim=1)  # [i, k] -> j
    right = partner.T.contiguous()  # [k, i]
    sign = table.gather(1, partner[:, None, :]).squeeze(1).T  # [k, i]
    g = algebra.grade_index()
    path = (g[None, :] * algebra.N_GRADES + g[right]) * algebra.N_GRADES + g[:, None]  # [k, i]
    return right, sign, path


class GeometricProduct(nn.Module):
    """y = (L0 x + GP_w(L1 x, normalise(L2 x))) / sqrt(2), the product weighted per channel and
    per grade path (g_i, g_j -> g_k)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.skip = CliffordLinear(in_channels, out_channels)
        self.left = CliffordLinear(in_channels, out_channels, bias=False)
        self.right = CliffordLinear(in_channels, out_channels)
        self.path_weight = nn.Parameter(torch.randn(out_channels, algebra.N_GRADES**3) / math.sqrt(algebra.N_GRADES))
        self.norm_gate = nn.Parameter(torch.zeros(out_channels, algebra.N_GRADES))
        right, sign, path = _product_tables()
        self.register_buffer("right_blade", right, persistent=False)
        self.register_buffer("sign", sign.float(), persistent=False)
        self.register_buffer("path", path, persistent=False)
        self.register_buffer("grades", algebra.grade_index(), persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # Per grade: x / (s (|x_g| - 1) + 1), s = sigmoid(learned) in (0, 1), so the divisor stays > 0.
        norms = torch.stack(
            [_smooth_norm(x[..., self.grades == g], -1) for g in range(algebra.N_GRADES)], dim=-1
        )
        s = torch.sigmoid(self.norm_gate)
        return x / (s * (norms - 1) + 1)[..., self.grades]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.left(x)  # [..., o, 8]
        b = self._normalise(self.right(x))[..., self.right_blade]  # [..., o, 8 (k), 8 (i)]
        coef = self.sign.to(x.dtype) * self.path_weight[:, self.path]  # [o, k, i]
        product = (a.unsqueeze(-2) * b * coef).sum(-1)
        return (self.skip(x) + product) / math.sqrt(2)


class GatedNonlinearity(nn.Module):
    """Each grade scaled by sigmoid(a * inv + b): inv is the scalar itself for grade 0 and
    the grade's norm otherwise."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, algebra.N_GRADES))
        self.shift = nn.Parameter(torch.zeros(channels, algebra.N_GRADES))
        self.register_buffer("grades", algebra.grade_index(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv = [x[..., algebra.SCALAR]] + [
            _smooth_norm(x[..., self.grades == g], -1) for g in range(1, algebra.N_GRADES)
        ]
        gate = torch.sigmoid(self.scale * torch.stack(inv, dim=-1) + self.shift)
        return x * gate[..., self.grades]


class CliffordLayerNorm(nn.Module):
    """Divide by the channel-mean multivector norm; learned per-channel scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = _smooth_norm(x, -1).mean(dim=-1, keepdim=True)
        return x / (norm[..., None] + _EPS) * self.scale[:, None]


class CliffordMLP(nn.Module):
    """``n_layers`` x (geometric product -> gated nonlinearity -> layer norm), then a linear map."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, n_layers: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(n_layers):
            layers += [GeometricProduct(width, hidden), GatedNonlinearity(hidden), CliffordLayerNorm(hidden)]
            width = hidden
        layers.append(CliffordLinear(width, out_channels))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
