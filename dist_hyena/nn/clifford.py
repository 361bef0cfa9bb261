"""O(3)-equivariant layers on Cl(3,0) multivectors (after Ruhe et al., 2023).

Every layer maps blade-major multivectors ``[8, ..., channels]`` to ``[8, ..., channels']`` and commutes with
the action of any orthogonal map on the blades (see ``algebra.orthogonal_action``): weights only ever mix
channels within one grade, and nonlinearities are driven by invariants. Blade-major: each blade of all channels
is one contiguous matrix, so the linear maps are batched matrix products and the product's terms are
whole-matrix multiply-adds, with no transposes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import algebra, fused

_EPS = fused.EPS


def _grade_onehot() -> torch.Tensor:
    """[4, 8]: grade g holds blade b. ``it @ x`` sums the blades of each grade (over dim 0 of ``[8, n]``),
    ``it.T @ v`` spreads a per-grade value over its blades: one small matrix product instead of slices."""
    return nn.functional.one_hot(algebra.grade_index(), algebra.N_GRADES).T.float()


def _over_dim0(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix`` ([4, 8] or [8, 4]) applied over dim 0 of ``x`` ([8 or 4, ..., C])."""
    return (matrix.to(x.dtype) @ x.reshape(x.shape[0], -1)).view(matrix.shape[0], *x.shape[1:])


def _grade_squared_norms(x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[8, ..., C] -> [4, ..., C]: the squared norm of each grade's part."""
    return _over_dim0(onehot, x.square())


def _grade_norms(x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[8, ..., C] -> [4, ..., C]: the smooth norm (differentiable at zero) of each grade's part."""
    return torch.sqrt(_grade_squared_norms(x, onehot) + _EPS**2)


def _per_blade(v: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[4, ..., C] per-grade values -> [8, ..., C], each blade taking its grade's value."""
    return _over_dim0(onehot.T, v)


def _per_grade(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-(grade, channel) parameter ``[4, C]`` shaped to broadcast over ``x [4, ..., C]``."""
    return p.view(p.shape[0], *[1] * (x.dim() - 2), p.shape[1])


class CliffordLinear(nn.Module):
    """y[b, ..., o] = sum_i x[b, ..., i] W[grade(b), i, o], plus a bias on the scalar blade: one matrix per grade,
    one batched matrix product over the 8 blades."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(algebra.N_GRADES, in_channels, out_channels) / math.sqrt(in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("grades", algebra.grade_index(), persistent=False)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``scale`` multiplies the output at no cost (it scales the weights, not the output)."""
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        weight = self.weight if scale == 1.0 else self.weight * scale
        if self.bias is None:
            y = torch.bmm(rows, weight[self.grades])
        else:  # the bias on blade 0 through baddbmm: adding it in place would copy the whole gradient in backward
            bias = self.bias if scale == 1.0 else self.bias * scale
            bias = torch.cat([bias[None], bias.new_zeros(algebra.N_BLADES - 1, bias.shape[0])])
            y = torch.baddbmm(bias[:, None], rows, weight[self.grades])
        return y.view(*x.shape[:-1], y.shape[-1])


class GeometricProduct(nn.Module):
    """y = (L0 x + GP_w(L1 x, normalise(L2 x))) / sqrt(2), the product weighted per channel and per grade path
    (g_i, g_j -> g_k): one weight for each of the 20 paths the product can reach."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.skip = CliffordLinear(in_channels, out_channels)
        self.left = CliffordLinear(in_channels, out_channels, bias=False)
        self.right = CliffordLinear(in_channels, out_channels)
        n_paths = len(algebra.grade_paths())
        self.path_weight = nn.Parameter(torch.randn(n_paths, out_channels) / math.sqrt(algebra.N_GRADES))
        self.norm_gate = nn.Parameter(torch.zeros(algebra.N_GRADES, out_channels))
        self.register_buffer("grade_onehot", _grade_onehot(), persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The right operand's normalisation alone (forward fuses it into the product; kept as the reference).
        Per grade: x / (s (|x_g| - 1) + 1), s = sigmoid(learned) in (0, 1), so the divisor stays > 0."""
        norms = _grade_norms(x, self.grade_onehot)
        s = _per_grade(torch.sigmoid(self.norm_gate), norms)
        return x * _per_blade(1 / (s * (norms - 1) + 1), self.grade_onehot)  # a product: cheaper backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (skip + GP(a, normalise(b))) / sqrt(2): the 1/sqrt(2) rides on the skip's weights and the product's term
        # weights; the normalisation, the product and the sum are one fused pass (fused.NormalisedProduct).
        half = 1 / math.sqrt(2)
        a, b, skip = self.left(x), self.right(x), self.skip(x, scale=half)  # [8, ..., o]
        flat = (a.shape[0], -1, a.shape[-1])
        return fused.NormalisedProduct.apply(a.reshape(flat), b.reshape(flat), self.path_weight * half,
                                             torch.sigmoid(self.norm_gate), skip.reshape(flat)).view_as(a)


GATE_INVARIANTS = ("norm", "squared_norm")


class GatedNonlinearity(nn.Module):
    """Each grade scaled by sigmoid(a * inv + b): inv is the scalar itself for grade 0 and, for the other grades,
    the grade's norm (``invariant="norm"``, ours) or its squared norm (``"squared_norm"``, the reference
    implementation's)."""

    def __init__(self, channels: int, invariant: str = "norm"):
        super().__init__()
        if invariant not in GATE_INVARIANTS:
            raise ValueError(f"gate invariant must be one of {GATE_INVARIANTS}, got {invariant!r}")
        self.squared = invariant == "squared_norm"
        self.scale = nn.Parameter(torch.ones(algebra.N_GRADES, channels))
        self.shift = nn.Parameter(torch.zeros(algebra.N_GRADES, channels))
        self.register_buffer("grade_onehot", _grade_onehot(), persistent=False)

    def forward(self, x: torch.Tensor, norm: CliffordLayerNorm | None = None) -> torch.Tensor:
        """``norm``: a layer norm to apply after the gate, in the same fused pass (fused.GateNorm)."""
        return _gate_norm(x, self.scale, self.shift, None if norm is None else norm.scale, self.squared)


class CliffordLayerNorm(nn.Module):
    """Divide by the channel-mean multivector norm; learned per-channel scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gate_norm(x, None, None, self.scale, False)


def _gate_norm(x: torch.Tensor, scale, shift, ln_scale, squared: bool) -> torch.Tensor:
    return fused.GateNorm.apply(x.reshape(x.shape[0], -1, x.shape[-1]), scale, shift, ln_scale, squared).view(x.shape)


class CliffordMLP(nn.Module):
    """``n_layers`` x (geometric product -> gated nonlinearity -> layer norm), then a linear map.

    ``layer_norm=False`` drops the layer norms; ``linear_path=True`` adds a linear map of the input to the output
    (``skip``), so the output can follow the input's magnitude, which the layer-normed path alone cannot;
    ``gate_invariant``: what the gates read (:class:`GatedNonlinearity`)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, n_layers: int = 1, layer_norm: bool = True,
                 linear_path: bool = False, gate_invariant: str = "norm"):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(n_layers):
            layers += [GeometricProduct(width, hidden), GatedNonlinearity(hidden, gate_invariant)]
            layers += [CliffordLayerNorm(hidden)] if layer_norm else []
            width = hidden
        layers.append(CliffordLinear(width, out_channels))
        self.net = nn.Sequential(*layers)
        self.skip = CliffordLinear(in_channels, out_channels, bias=False) if linear_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, layers = x, list(self.net)
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, GatedNonlinearity) and layers and isinstance(layers[0], CliffordLayerNorm):
                y = layer(y, layers.pop(0))  # gate and layer norm in one pass
            else:
                y = layer(y)
        return y if self.skip is None else y + self.skip(x)
