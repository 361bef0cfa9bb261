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


def _grade_onehot() -> torch.Tensor:
    """[8, 4]: blade b belongs to grade g. ``x @ it`` sums blades per grade, ``v @ it.T`` spreads a per-grade
    value over its blades: matrix products instead of mask indexing, several times faster on long inputs."""
    return nn.functional.one_hot(algebra.grade_index(), algebra.N_GRADES).float()


def _grade_squared_norms(x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[..., 8] -> [..., 4]: the squared norm of each grade's part."""
    return x.square() @ onehot.to(x.dtype)


def _grade_norms(x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[..., 8] -> [..., 4]: the smooth norm of each grade's part."""
    return torch.sqrt(_grade_squared_norms(x, onehot) + _EPS**2)


def _per_blade(v: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[..., 4] per-grade values -> [..., 8], each blade taking its grade's value."""
    return v @ onehot.to(v.dtype).T


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


# Token x channel rows per chunk of the product: a chunk's [rows, 64] outer products (1 MiB in float32) stay in
# cache, which makes the product several times faster than whole-tensor passes, and its temporaries do not
# grow with the sequence length.
_CHUNK_ROWS = 4096


def _outer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[o, t, 8] x [o, t, 8] -> [o, t, 64]: x_i y_j, flattened (i, j)."""
    return (x.unsqueeze(-1) * y.unsqueeze(-2)).flatten(-2)


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """[t, o, 8] -> [o, t, 8], contiguous: the layout of the batched products (a copy of 8, not 64, per row)."""
    return x.transpose(0, 1).contiguous()


def _contract(outer: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[o, t, 64] x [o, 64, 8] -> [t, o, 8]."""
    return torch.bmm(outer, w).transpose(0, 1)


class _ChannelBilinear(torch.autograd.Function):
    """y[..., o, k] = sum_ij a[..., o, i] b[..., o, j] w[o, i, j, k]: one bilinear map per channel (here the
    weighted Cayley product). Each chunk of rows forms the outer products a_i b_j and contracts them with w
    in one batched matrix product. Keeps only a, b and w for backward (autograd would keep every outer
    product, 8x the operands) and rebuilds the outer products chunk by chunk there."""

    @staticmethod
    def forward(ctx, a, b, w):
        ctx.save_for_backward(a, b, w)
        o = w.shape[0]
        a2, b2, w2 = a.reshape(-1, o, 8), b.reshape(-1, o, 8), w.reshape(o, 64, 8)
        out = torch.empty_like(a2)
        step = max(1, _CHUNK_ROWS // o)
        for s in range(0, a2.shape[0], step):
            ac, bc = _channel_major(a2[s : s + step]), _channel_major(b2[s : s + step])
            out[s : s + step] = _contract(_outer(ac, bc), w2)
        return out.view_as(a)

    @staticmethod
    def backward(ctx, grad):
        a, b, w = ctx.saved_tensors
        o = w.shape[0]
        a2, b2, g2 = a.reshape(-1, o, 8), b.reshape(-1, o, 8), grad.reshape(-1, o, 8)
        w_for_a = w.permute(0, 2, 3, 1).reshape(o, 64, 8)  # [o, (j, k), i]
        w_for_b = w.permute(0, 1, 3, 2).reshape(o, 64, 8)  # [o, (i, k), j]
        need_a, need_b, need_w = ctx.needs_input_grad
        grad_a = torch.empty_like(a2) if need_a else None
        grad_b = torch.empty_like(b2) if need_b else None
        grad_w = torch.zeros(o, 64, 8, dtype=w.dtype, device=w.device) if need_w else None
        step = max(1, _CHUNK_ROWS // o)
        for s in range(0, a2.shape[0], step):
            ac, bc, gc = (_channel_major(t[s : s + step]) for t in (a2, b2, g2))
            if need_a:
                grad_a[s : s + step] = _contract(_outer(bc, gc), w_for_a)
            if need_b:
                grad_b[s : s + step] = _contract(_outer(ac, gc), w_for_b)
            if need_w:
                grad_w.baddbmm_(_outer(ac, bc).transpose(1, 2), gc)
        return (grad_a.view_as(a) if need_a else None, grad_b.view_as(b) if need_b else None,
                grad_w.view_as(w) if need_w else None)


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
        g = algebra.grade_index()
        self.register_buffer("cayley", algebra.cayley_table(), persistent=False)  # [i, j, k]
        path = (g[:, None, None] * algebra.N_GRADES + g[None, :, None]) * algebra.N_GRADES + g[None, None, :]
        self.register_buffer("path", path, persistent=False)  # [i, j, k] -> grade path (g_i, g_j, g_k)
        self.register_buffer("grade_onehot", _grade_onehot(), persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # Per grade: x / (s (|x_g| - 1) + 1), s = sigmoid(learned) in (0, 1), so the divisor stays > 0.
        s = torch.sigmoid(self.norm_gate)
        return x / _per_blade(s * (_grade_norms(x, self.grade_onehot) - 1) + 1, self.grade_onehot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.left(x)  # [..., o, 8]
        b = self._normalise(self.right(x))  # [..., o, 8]
        weighted_cayley = self.cayley.to(x.dtype) * self.path_weight[:, self.path]  # [o, i, j, k]
        product = _ChannelBilinear.apply(a, b, weighted_cayley)
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
        self.scale = nn.Parameter(torch.ones(channels, algebra.N_GRADES))
        self.shift = nn.Parameter(torch.zeros(channels, algebra.N_GRADES))
        self.register_buffer("grade_onehot", _grade_onehot(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = (_grade_squared_norms if self.squared else _grade_norms)(x, self.grade_onehot)
        inv = torch.cat([x[..., algebra.SCALAR, None], norms[..., 1:]], dim=-1)  # the scalar itself, not its norm
        gate = torch.sigmoid(self.scale * inv + self.shift)
        return x * _per_blade(gate, self.grade_onehot)


class CliffordLayerNorm(nn.Module):
    """Divide by the channel-mean multivector norm; learned per-channel scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = _smooth_norm(x, -1).mean(dim=-1, keepdim=True)
        return x / (norm[..., None] + _EPS) * self.scale[:, None]


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
