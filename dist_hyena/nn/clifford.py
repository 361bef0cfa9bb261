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

from . import algebra

_EPS = 1e-6


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.bias is None:
            y = torch.bmm(rows, self.weight[self.grades])
        else:  # the bias on blade 0 through baddbmm: adding it in place would copy the whole gradient in backward
            bias = torch.cat([self.bias[None], self.bias.new_zeros(algebra.N_BLADES - 1, self.bias.shape[0])])
            y = torch.baddbmm(bias[:, None], rows, self.weight[self.grades])
        return y.view(*x.shape[:-1], y.shape[-1])


# Elements (rows x channels) of one blade per chunk of the product: a chunk's [8, rows, C] temporaries (1 MiB in
# float32) stay in cache, and they do not grow with the input. Measured best of 2^12-2^17 (2-3x between them).
_CHUNK_ELEMENTS = 1 << 15


def _chunks(rows: int, channels: int):
    step = max(1, _CHUNK_ELEMENTS // channels)
    for s in range(0, rows, step):
        yield slice(s, min(rows, s + step))


class _SparseProduct(torch.autograd.Function):
    """y[k] = sum_i a[i] * b[j(k, i)] * c[k, i] on blade-major ``[8, rows, C]`` operands, ``c [8, 8, C]``: the
    weighted geometric product of each channel, its 64 non-zero terms only (blade_i blade_j(k, i) = ±blade_k;
    the signs and the path weights are in c). Chunk by chunk over the rows; keeps only a, b and c for backward
    (autograd would keep every term)."""

    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, b, c)
        terms = algebra.product_terms()
        out = torch.empty_like(a)
        for rows in _chunks(a.shape[1], a.shape[2]):
            ar, br = a[:, rows], b[:, rows]
            for k in range(algebra.N_BLADES):
                ac = ar * c[k, :, None]  # [i, r, C]: a_i c_ki
                acc = torch.mul(ac[0], br[terms[k][0][0]], out=out[k, rows])
                for i in range(1, algebra.N_BLADES):
                    acc.addcmul_(ac[i], br[terms[k][i][0]])
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, c = ctx.saved_tensors
        terms = algebra.product_terms()
        need_a, need_b, need_c = ctx.needs_input_grad
        grad_a, grad_b = torch.zeros_like(a), torch.zeros_like(b)
        grad_c = torch.zeros_like(c) if need_c else None
        for rows in _chunks(a.shape[1], a.shape[2]):
            ar, br, gr, ga, gb = a[:, rows], b[:, rows], grad[:, rows], grad_a[:, rows], grad_b[:, rows]
            for k in range(algebra.N_BLADES):
                right = [j for j, _ in terms[k]]
                gc = gr[k] * c[k, :, None]  # [i, r, C]: g_k c_ki
                for i, j in enumerate(right):
                    ga[i].addcmul_(gc[i], br[j])
                    gb[j].addcmul_(gc[i], ar[i])
                if need_c:
                    grad_c[k] += (ar * gr[k] * br[right]).sum(1)
        return grad_a if need_a else None, grad_b if need_b else None, grad_c


def _terms() -> tuple[torch.Tensor, torch.Tensor]:
    """[8 (k), 8 (i)]: the sign of each term of the product and the index of its grade path in ``grade_paths``."""
    paths = {p: n for n, p in enumerate(algebra.grade_paths())}
    g = algebra.GRADES
    terms = algebra.product_terms()
    sign = torch.tensor([[s for _, s in row] for row in terms], dtype=torch.float32)
    path = torch.tensor([[paths[g[i], g[j], g[k]] for i, (j, _) in enumerate(row)] for k, row in enumerate(terms)])
    return sign, path


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
        sign, path = _terms()
        self.register_buffer("sign", sign, persistent=False)  # [k, i]
        self.register_buffer("path", path, persistent=False)  # [k, i] -> grade path
        self.register_buffer("grade_onehot", _grade_onehot(), persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # Per grade: x / (s (|x_g| - 1) + 1), s = sigmoid(learned) in (0, 1), so the divisor stays > 0.
        norms = _grade_norms(x, self.grade_onehot)
        s = _per_grade(torch.sigmoid(self.norm_gate), norms)
        return x * _per_blade(1 / (s * (norms - 1) + 1), self.grade_onehot)  # a product: cheaper backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.left(x)  # [8, ..., o]
        b = self._normalise(self.right(x))
        coef = self.sign.to(x.dtype)[..., None] * self.path_weight[self.path]  # [k, i, o]
        flat = (a.shape[0], -1, a.shape[-1])
        product = _SparseProduct.apply(a.reshape(flat), b.reshape(flat), coef).view_as(a)
        return (self.skip(x) + product) / math.sqrt(2)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = (_grade_squared_norms if self.squared else _grade_norms)(x, self.grade_onehot)
        inv = torch.cat([x[algebra.SCALAR, None], norms[1:]])  # the scalar itself, not its norm
        gate = torch.sigmoid(_per_grade(self.scale, inv) * inv + _per_grade(self.shift, inv))
        return x * _per_blade(gate, self.grade_onehot)


class CliffordLayerNorm(nn.Module):
    """Divide by the channel-mean multivector norm; learned per-channel scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(x.square().sum(dim=0) + _EPS**2).mean(dim=-1, keepdim=True)  # [..., 1]
        return x * (self.scale / (norm + _EPS))


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
        y = self.net(x)
        return y if self.skip is None else y + self.skip(x)
