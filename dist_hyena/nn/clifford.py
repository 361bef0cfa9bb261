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

from . import algebra, fused, native

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
    one batched matrix product over the 8 blades.

    ``x`` may be an :class:`algebra.Compact` (vectors and scalars, every other coefficient zero): then only the
    scalar blade (its scalar channels through W[0]) and the vector blades (its vector channels through W[1]) are
    multiplied, and grades 2 and 3 of the result are zeros. :meth:`read` computes only what
    ``algebra.read(self(x), ...)`` would keep. Both give the dense map's values and gradients (the skipped terms
    are products with zeros)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(algebra.N_GRADES, in_channels, out_channels) / math.sqrt(in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("grades", algebra.grade_index(), persistent=False)

    def forward(self, x: torch.Tensor | algebra.Compact, scale: float = 1.0) -> torch.Tensor:
        """``scale`` multiplies the output at no cost (it scales the weights, not the output)."""
        if isinstance(x, algebra.Compact):
            scalar, vector = self._blades(x, slice(None), slice(None), scale)
            return torch.cat([scalar[None], vector, scalar.new_zeros(algebra.N_BLADES - 4, *scalar.shape)])
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        weight = self.weight if scale == 1.0 else self.weight * scale
        if self.bias is None:
            y = torch.bmm(rows, weight[self.grades])
        else:  # the bias on blade 0 through baddbmm: adding it in place would copy the whole gradient in backward
            bias = self.bias if scale == 1.0 else self.bias * scale
            bias = torch.cat([bias[None], bias.new_zeros(algebra.N_BLADES - 1, bias.shape[0])])
            y = torch.baddbmm(bias[:, None], rows, weight[self.grades])
        return y.view(*x.shape[:-1], y.shape[-1])

    def read(self, x: torch.Tensor | algebra.Compact, n_vectors: int,
             n_scalars: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``algebra.read(self(x), n_vectors, n_scalars)``: only the vector blades of the first ``n_vectors``
        output channels and the scalar blade of the next ``n_scalars`` are computed."""
        algebra.check_read(self.weight.shape[-1], n_vectors, n_scalars)
        scalars, vectors = self._blades(x, slice(n_vectors, n_vectors + n_scalars), slice(0, n_vectors))
        return vectors.movedim(0, -1), scalars

    def _blades(self, x: torch.Tensor | algebra.Compact, scalar_out: slice, vector_out: slice,
                scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The map's scalar blade ``[..., o]`` for the output channels ``scalar_out`` and its vector blades
        ``[3, ..., o']`` for ``vector_out``: from a multivector's blades 0 and 1-3, or a compact input's parts."""
        if isinstance(x, algebra.Compact):
            n = x.vectors.shape[-2]
            parts = (x.scalars, slice(n, None)), (x.vectors.movedim(-1, 0), slice(0, n))
        else:
            parts = (x[algebra.SCALAR], slice(None)), (x[algebra.VECTOR], slice(None))
        (scalars, scalar_in), (vectors, vector_in) = parts
        bias = None if self.bias is None else self.bias[scalar_out]
        return (_matmul(scalars, self.weight[0, scalar_in, scalar_out], scale, bias),
                _matmul(vectors, self.weight[1, vector_in, vector_out], scale))


def _matmul(x: torch.Tensor, weight: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``(x @ weight + bias) * scale`` over the last dim of ``x [..., i]`` (the scale on the small operands)."""
    if scale != 1.0:
        weight, bias = weight * scale, None if bias is None else bias * scale
    rows = x.reshape(-1, x.shape[-1])
    y = rows @ weight if bias is None else torch.addmm(bias, rows, weight)
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
        self.n_layers = n_layers

    def forward(self, x: torch.Tensor | algebra.Compact,
                read: tuple[int, int] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x``: multivector channels ``[8, ..., in]`` or an :class:`algebra.Compact` (its zeros are skipped).
        ``read=(n_vectors, n_scalars)``: return ``algebra.read(output, n_vectors, n_scalars)``, computing only
        the output blades and channels read."""
        if read is not None and self._fusable(x):
            vectors, scalars = self._compact_read(x, read)
        else:
            y, layers = x, list(self.net)
            last = layers.pop()
            while layers:
                layer = layers.pop(0)
                if isinstance(layer, GatedNonlinearity) and layers and isinstance(layers[0], CliffordLayerNorm):
                    y = layer(y, layers.pop(0))  # gate and layer norm in one pass
                else:
                    y = layer(y)
            if read is None:
                y = last(y)
                return y if self.skip is None else y + self.skip(x)
            vectors, scalars = last.read(y, *read)
        if self.skip is not None:
            skip_vectors, skip_scalars = self.skip.read(x, *read)
            vectors, scalars = vectors + skip_vectors, scalars + skip_scalars
        return vectors, scalars

    def _fusable(self, x: torch.Tensor | algebra.Compact) -> bool:
        """Whether ``forward(x, read)`` runs as one :class:`fused.CompactMLP`: a one-layer MLP on a compact input,
        where the compiled kernels take it (CPU, float32 or float64)."""
        return isinstance(x, algebra.Compact) and self.n_layers == 1 and native.supports(x.scalars)

    def _compact_read(self, x: algebra.Compact, read: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x, read)`` of a one-layer MLP on a compact input, as one :class:`fused.CompactMLP` (the compiled
        kernels' path; the layers' own composition is its reference)."""
        product, gate, *norm, last = self.net
        algebra.check_read(last.weight.shape[-1], *read)
        return fused.CompactMLP.apply(
            x.vectors, x.scalars, read, gate.squared, product.left.weight, product.right.weight, product.right.bias,
            product.skip.weight, product.skip.bias, product.path_weight, product.norm_gate, gate.scale, gate.shift,
            norm[0].scale if norm else None, last.weight, last.bias)
