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


def _product_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse form of the Cayley table: for output blade k and left blade i, the single right
    blade j with blade_i * blade_j ∝ blade_k (``right [k, i]``), its sign and the grade path
    (g_i, g_j, g_k) (``path [k, i]``); and for output k and right blade j the single left blade
    (``left [k, j]``)."""
    table = algebra.cayley_table(torch.float64)
    right = table.abs().argmax(dim=1).T.contiguous()  # [i, k] -> j, stored [k, i]
    left = table.abs().argmax(dim=0).T.contiguous()  # [j, k] -> i, stored [k, j]
    sign = table.gather(1, right.T[:, None, :]).squeeze(1).T  # [k, i]
    g = algebra.grade_index()
    path = (g[None, :] * algebra.N_GRADES + g[right]) * algebra.N_GRADES + g[:, None]  # [k, i]
    return right, left, sign, path


# Rows (token x channel pairs) per chunk of the product's [rows, 8, 8] temporaries: ~32 MiB in float32,
# so the transient memory stays flat however long the sequence is.
_CHUNK_ROWS = 2**17


class _WeightedProduct(torch.autograd.Function):
    """y[..., o, k] = sum_i a[..., o, i] b[..., o, right[k, i]] coef[o, k, i]: the Cayley product with a
    weight per channel and output/left blade pair. Autograd would keep the [..., o, 8, 8] gathered operands
    (16x the inputs); this keeps only a and b and rebuilds the rest chunk by chunk in backward. (A dense
    einsum against an [o, 8, 8, 8] weighted Cayley tensor was tried for the forward: slower in
    benchmarks/geometric_product.py on this machine, so the sparse gather stays.)"""

    @staticmethod
    def forward(ctx, a, b, coef, right, left):
        ctx.save_for_backward(a, b, coef, right, left)
        o = coef.shape[0]
        a2, b2 = a.reshape(-1, o, 8), b.reshape(-1, o, 8)
        out = torch.empty_like(a2)
        step = max(1, _CHUNK_ROWS // o)
        for s in range(0, a2.shape[0], step):
            sl = slice(s, s + step)
            torch.sum(a2[sl].unsqueeze(-2) * b2[sl][..., right] * coef, dim=-1, out=out[sl])
        return out.view_as(a)

    @staticmethod
    def backward(ctx, grad):
        a, b, coef, right, left = ctx.saved_tensors
        o = coef.shape[0]
        a2, b2, g2 = a.reshape(-1, o, 8), b.reshape(-1, o, 8), grad.reshape(-1, o, 8)
        coef_by_right = coef.gather(2, left.expand(o, 8, 8))  # [o, k, j]: coef at the left partner of (k, j)
        grad_a, grad_b, grad_coef = torch.empty_like(a2), torch.empty_like(b2), torch.zeros_like(coef)
        step = max(1, _CHUNK_ROWS // o)
        for s in range(0, a2.shape[0], step):
            sl = slice(s, s + step)
            gk = g2[sl].unsqueeze(-1)  # [t, o, k, 1]
            b_right = b2[sl][..., right]  # [t, o, k, i]
            grad_a[sl] = (gk * b_right * coef).sum(-2)
            grad_coef += torch.einsum("tok,toki->oki", g2[sl], a2[sl].unsqueeze(-2) * b_right)
            del b_right
            grad_b[sl] = (gk * a2[sl][..., left] * coef_by_right).sum(-2)
        return grad_a.view_as(a), grad_b.view_as(b), grad_coef, None, None


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
        right, left, sign, path = _product_tables()
        self.register_buffer("right_blade", right, persistent=False)
        self.register_buffer("left_blade", left, persistent=False)
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
        b = self._normalise(self.right(x))  # [..., o, 8]
        coef = self.sign.to(x.dtype) * self.path_weight[:, self.path]  # [o, k, i]
        product = _WeightedProduct.apply(a, b, coef, self.right_blade, self.left_blade)
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


class _TokenChunkedRecompute(torch.autograd.Function):
    """y = net(x) for a token-wise ``net``, keeping only x for backward: backward recomputes ``net`` one
    chunk of tokens at a time and backpropagates through that chunk alone, so the activations alive at any
    moment are those of ``chunk`` tokens, not of all of them. Exact: every token's output depends on that
    token's input only."""

    @staticmethod
    def forward(ctx, net, chunk, x, *params):
        ctx.net, ctx.chunk = net, chunk
        ctx.save_for_backward(x)
        rows = x.reshape(-1, *x.shape[-2:])
        with torch.no_grad():
            out = torch.cat([net(rows[s : s + chunk]) for s in range(0, rows.shape[0], chunk)])
        return out.view(*x.shape[:-2], *out.shape[-2:])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        params = [p for p in ctx.net.parameters() if p.requires_grad]
        rows, grad_rows = x.reshape(-1, *x.shape[-2:]), grad.reshape(-1, *grad.shape[-2:])
        grad_x = torch.empty_like(rows)
        grad_params = [torch.zeros_like(p) for p in params]
        for s in range(0, rows.shape[0], ctx.chunk):
            with torch.enable_grad():
                xc = rows[s : s + ctx.chunk].detach().requires_grad_()
                grads = torch.autograd.grad(ctx.net(xc), [xc, *params], grad_rows[s : s + ctx.chunk])
            grad_x[s : s + ctx.chunk] = grads[0]
            for acc, g in zip(grad_params, grads[1:], strict=True):
                acc += g
        all_grads = iter(grad_params)
        by_param = [next(all_grads) if p.requires_grad else None for p in ctx.net.parameters()]
        return (None, None, grad_x.view_as(x), *by_param)


class CliffordMLP(nn.Module):
    """``n_layers`` x (geometric product -> gated nonlinearity -> layer norm), then a linear map.

    ``token_chunk`` (default None: plain autograd) trades compute for memory on long sequences: when set,
    backward keeps only the input and recomputes the MLP ``token_chunk`` tokens at a time (about one extra
    forward), so its activation memory no longer grows with the sequence length.
    """

    token_chunk: int | None = None

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
        if self.token_chunk is None or not torch.is_grad_enabled():
            return self.net(x)
        return _TokenChunkedRecompute.apply(self.net, self.token_chunk, x, *self.net.parameters())
