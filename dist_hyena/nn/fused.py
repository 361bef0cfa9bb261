"""Fused passes of the Clifford layers: custom autograd Functions with hand-written backward.

The layers' elementwise work (the geometric product, the product's input normalisation, the gate, the layer norm)
is memory-bound: as separate autograd ops every one of them is a full pass over ``[8, rows, C]`` tensors out of
cache, keeps its own inputs for backward and runs autograd's generic backward. Here each Function keeps only its
inputs (backward recomputes the cheap intermediates) and writes its gradients by hand. On CPU tensors both
directions call the compiled kernels of ``native.py`` (one pass, a few channels' blades in registers); elsewhere
(GPUs, no compiler, ``DIST_HYENA_NATIVE=0``) they run the eager passes below: plain tensor ops over chunks of rows
small enough for a chunk's temporaries to stay in cache.

Blade-major operands ``[8, rows, C]``: blade b of all rows and channels is one matrix; the grades are the blade
ranges 0 | 1-3 | 4-6 | 7 (``algebra.GRADES``).
"""

from __future__ import annotations

import functools

import torch

from . import algebra, native

EPS = 1e-6

# Elements (rows x channels) of one blade per chunk: the product's [64, rows, C] temporaries (2 MiB in float32) stay
# in cache; fewer rows per chunk pay more per-op overhead (2^13 measured best of 2^11-2^14 at the recall widths,
# 1.1-1.9x between them).
CHUNK_ELEMENTS = 1 << 13


def chunk_rows(rows: int, channels: int, elements: int | None = None) -> int:
    return min(rows, max(1, (elements or CHUNK_ELEMENTS) // channels))


def chunks(rows: int, channels: int, elements: int | None = None):
    step = chunk_rows(rows, channels, elements)
    for s in range(0, rows, step):
        yield slice(s, min(rows, s + step))


class _Buffer:
    """One allocation reused by every chunk (a fresh large temporary per chunk costs page faults on CPU)."""

    def __init__(self, like: torch.Tensor, lead: int, rows: int):
        self.data = like.new_empty(lead * rows * like.shape[-1])
        self.lead = lead

    def view(self, rows: int, channels: int) -> torch.Tensor:
        return self.data[: self.lead * rows * channels].view(self.lead, rows, channels)


@functools.cache
def _indices(device: torch.device) -> dict[str, torch.Tensor]:
    """Gather indices of the product's 64 terms, blade_i blade_j(k, i) = ±blade_k, on ``device``:
    ``right_ki`` [k, i] -> j (k-major, flat), ``right_ik`` [i, k] -> j (i-major), ``left_jk`` [j, k] -> the i with
    j(k, i) = j (j-major), ``left`` [k, j] -> i, and ``grades`` [8] -> grade of each blade."""
    terms = algebra.product_terms()
    right = torch.tensor([[j for j, _ in row] for row in terms])  # [k, i]
    left = torch.empty_like(right)
    for k in range(algebra.N_BLADES):
        left[k, right[k]] = torch.arange(algebra.N_BLADES)
    sign, path = algebra.term_paths()
    return {"right_ki": right.flatten().to(device), "right_ik": right.T.flatten().to(device),
            "left_jk": left.T.flatten().to(device), "left": left.to(device), "grades": algebra.grade_index(device),
            "sign": torch.tensor(sign, dtype=torch.float64, device=device),
            "path": torch.tensor(path, device=device)}


def coefficients(w: torch.Tensor) -> torch.Tensor:
    """Path weights ``w [20, C]`` -> each term's signed weight ``c [8 (k), 8 (i), C]``."""
    idx = _indices(w.device)
    return idx["sign"].to(w.dtype)[..., None] * w[idx["path"]]


def _path_gradient(grad_c: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`coefficients`: ``grad_c [8, 8, C]`` -> ``[20, C]``."""
    idx = _indices(grad_c.device)
    signed = (idx["sign"].to(grad_c.dtype)[..., None] * grad_c).reshape(-1, grad_c.shape[-1])
    return grad_c.new_zeros(len(algebra.grade_paths()), grad_c.shape[-1]).index_add_(0, idx["path"].flatten(), signed)


def _grade_sums(v: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[8, r, C] (contiguous) -> [4, r, C]: the sum of each grade's blades, one small matrix product."""
    return (onehot @ v.view(v.shape[0], -1)).view(onehot.shape[0], *v.shape[1:])


def _onehot(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(_indices(x.device)["grades"], algebra.N_GRADES).T.to(x.dtype)


def _normalise_chunk(xr: torch.Tensor, s: torch.Tensor, onehot: torch.Tensor, grades: torch.Tensor):
    """b = x / (s (|x_g| - 1) + 1) per grade on one chunk ``[8, r, C]``; also the smooth grade norms and the
    reciprocals [4, r, C] that backward needs."""
    norm = _grade_sums(xr.square(), onehot).add_(EPS**2).sqrt_()
    inv = torch.addcmul(1 - s, s, norm).reciprocal_()
    return xr * inv.index_select(0, grades), norm, inv


class NormalisedProduct(torch.autograd.Function):
    """``skip + GP_w(a, normalise_s(x))`` on blade-major ``[8, rows, C]`` operands, in one pass of row chunks.

    GP_w: y[k] = sum_i a[i] b[j(k, i)] c[k, i], the weighted geometric product of each channel, its 64 non-zero
    terms, c[k, i] = sign(k, i) w[path(k, i)] (:func:`coefficients`: one weight per grade path, ``w [20, C]``);
    normalise_s: b = x / (s (|x_g| - 1) + 1) per grade g, ``s [4, C]`` in (0, 1). Keeps a, x, w and s for
    backward, which recomputes b chunk by chunk; the gradient of ``skip`` is the incoming gradient itself."""

    @staticmethod
    def forward(ctx, a, x, w, s, skip):
        ctx.save_for_backward(a, x, w, s)
        if native.supports(a):
            return native.product_forward(a, x, w, s, skip, EPS**2)
        c = coefficients(w)
        idx, onehot = _indices(a.device), _onehot(a)
        n, rows_total, channels = a.shape
        s = s[:, None]
        c64 = c.reshape(n * n, 1, channels)
        out = torch.empty_like(a)
        buf = _Buffer(a, n * n, chunk_rows(rows_total, channels))
        for rows in chunks(rows_total, channels):
            b, _, _ = _normalise_chunk(x[:, rows], s, onehot, idx["grades"])
            terms = torch.index_select(b, 0, idx["right_ki"], out=buf.view(b.shape[1], channels))
            terms = terms.mul_(c64).view(n, n, -1, channels).mul_(a[None, :, rows])
            torch.sum(terms, 1, out=out[:, rows]).add_(skip[:, rows])
        return out

    @staticmethod
    def backward(ctx, grad):
        a, x, w, s = ctx.saved_tensors
        need_a, need_x, need_w, need_s, need_skip = ctx.needs_input_grad
        if native.supports(a):
            grad_a, grad_x, grad_w, grad_s = native.product_backward(grad, a, x, w, s, EPS**2, need_w or need_s)
            return grad_a, grad_x, grad_w, grad_s, grad if need_skip else None
        c = coefficients(w)
        idx, onehot = _indices(a.device), _onehot(a)
        n, rows_total, channels = a.shape
        s = s[:, None]
        c_ik = c.transpose(0, 1)[..., None, :]  # [i, k, 1, C]
        c_jk = c.gather(1, idx["left"][..., None].expand(-1, -1, channels)).transpose(0, 1)[..., None, :]
        grad_a, grad_x = torch.empty_like(a), torch.empty_like(x)
        grad_c_ik = torch.zeros(n * n, channels, dtype=c.dtype, device=c.device) if need_w else None
        grad_s = torch.zeros(algebra.N_GRADES, channels, dtype=s.dtype, device=s.device) if need_s else None
        step = chunk_rows(rows_total, channels)
        buf, buf_c = _Buffer(a, n * n, step), (_Buffer(a, n * n, step) if need_w else None)
        for rows in chunks(rows_total, channels):
            ar, xr, g = a[:, rows], x[:, rows], grad[:, rows][None]
            r = ar.shape[1]
            b, norm, inv = _normalise_chunk(xr, s, onehot, idx["grades"])
            q = torch.index_select(b, 0, idx["right_ik"], out=buf.view(r, channels))
            q = q.view(n, n, r, channels).mul_(g)  # [i, k]: b_j(k,i) g_k
            if need_w:
                grad_c_ik += torch.mul(q, ar[:, None], out=buf_c.view(r, channels).view(n, n, r, channels)).view(
                    n * n, r, channels).sum(1)
            torch.sum(q.mul_(c_ik), 1, out=grad_a[:, rows])
            gb = torch.index_select(ar, 0, idx["left_jk"], out=buf.view(r, channels))
            gb = gb.view(n, n, r, channels).mul_(c_jk).mul_(g).sum(1)  # [j]
            # b = x inv_g: grad_x = gb inv_g - x inv_g^2 s / |x_g| sum_g(gb x), grad_s = -sum inv_g^2 (|x_g| - 1) ...
            u = _grade_sums(gb * xr, onehot).mul_(inv).mul_(inv)
            if need_s:
                grad_s -= (u * (norm - 1)).sum(1)
            w = u.mul_(s).div_(norm).index_select(0, idx["grades"])
            torch.mul(gb, inv.index_select(0, idx["grades"]), out=grad_x[:, rows]).addcmul_(xr, w, value=-1)
        grad_w = _path_gradient(grad_c_ik.view(n, n, channels).transpose(0, 1)) if need_w else None
        return grad_a, grad_x, grad_w, grad_s, grad if need_skip else None


# The gate and the layer norm keep only [8, rows, C] and [4, rows, C] temporaries: larger chunks than the product's.
GATE_CHUNK_ELEMENTS = 1 << 14


def _gate_chunk(hr, scale, shift, onehot, squared, ln_scale):
    """The gate's and the layer norm's per-grade factors on one chunk ``[8, r, C]``: the grade sums of squares n2
    [4, r, C]; the gate's invariants and gates (None without a gate); the layer norm's per-(row, channel) norms m,
    reciprocal rr [r, 1] of the mean norm and factor f = ln_scale rr (None without a layer norm)."""
    n2 = _grade_sums(hr.square(), onehot)
    inv = gate = None
    if scale is not None:
        inv = n2.clone() if squared else (n2 + EPS**2).sqrt_()
        inv[0] = hr[0]  # the scalar itself, not its norm
        gate = torch.addcmul(shift, scale, inv).sigmoid_()
    m = rr = f = None
    if ln_scale is not None:
        m = (n2 if gate is None else gate.square().mul_(n2)).sum(0).add_(EPS**2).sqrt_()  # |z| per (row, channel)
        rr = m.mean(-1, keepdim=True).add_(EPS).reciprocal_()
        f = ln_scale * rr
    return n2, inv, gate, m, rr, f


class GateNorm(torch.autograd.Function):
    """The gated nonlinearity followed by the layer norm, either of them optional, in one pass of row chunks.

    Gate: z_b = h_b sigmoid(scale_g inv_g + shift_g), inv_0 = h_0 (the scalar) and, for the grades g > 0, the smooth
    norm sqrt(|h_g|^2 + eps^2) or (``squared``) |h_g|^2; ``scale, shift [4, C]`` (both None: no gate). Layer norm:
    y = z ln_scale / (mean_C sqrt(|z|^2 + eps^2) + eps), ``ln_scale [C]`` (None: no layer norm). Keeps only h and
    the parameters for backward, which recomputes the per-grade factors chunk by chunk."""

    @staticmethod
    def forward(ctx, h, scale, shift, ln_scale, squared: bool):
        ctx.save_for_backward(h, scale, shift, ln_scale)
        ctx.squared = squared
        if native.supports(h):
            return native.gate_norm_forward(h, scale, shift, ln_scale, squared, EPS)
        idx, onehot = _indices(h.device), _onehot(h)
        scale, shift = (None, None) if scale is None else (scale[:, None], shift[:, None])
        out = torch.empty_like(h)
        for rows in chunks(h.shape[1], h.shape[2], GATE_CHUNK_ELEMENTS):
            hr = h[:, rows]
            _, _, gate, _, _, f = _gate_chunk(hr, scale, shift, onehot, squared, ln_scale)
            factor = f[None] if gate is None else (gate if f is None else gate * f)
            torch.mul(hr, factor.index_select(0, idx["grades"]) if gate is not None else factor, out=out[:, rows])
        return out

    @staticmethod
    def backward(ctx, grad):
        h, scale_p, shift_p, ln_scale = ctx.saved_tensors
        if native.supports(h):
            return *native.gate_norm_backward(grad, h, scale_p, shift_p, ln_scale, ctx.squared, EPS), None
        idx, onehot = _indices(h.device), _onehot(h)
        gated = scale_p is not None
        scale, shift = (scale_p[:, None], shift_p[:, None]) if gated else (None, None)
        channels = h.shape[2]
        grad_h = torch.empty_like(h)
        grad_scale = torch.zeros_like(scale_p) if gated else None
        grad_shift = torch.zeros_like(shift_p) if gated else None
        grad_ln = torch.zeros_like(ln_scale) if ln_scale is not None else None
        for rows in chunks(h.shape[1], channels, GATE_CHUNK_ELEMENTS):
            hr, gy = h[:, rows], grad[:, rows]
            n2, inv, gate, m, rr, f = _gate_chunk(hr, scale, shift, onehot, ctx.squared, ln_scale)
            e = _grade_sums(gy * hr, onehot)  # [4, r, C]: sum over each grade's blades of gy_b h_b
            # with z = h gate_g: dL/dz_b = gy_b f + z_b coef / m, coef = -rr^2 / C sum_C ln_scale sum_b gy_b z_b
            if ln_scale is not None:
                d = (e if gate is None else gate * e).sum(0)  # sum_b gy_b z_b per (row, channel)
                grad_ln += (d * rr).sum(0)
                coef = (d * ln_scale).sum(-1, keepdim=True).mul_(rr.square()).div_(-channels)  # [r, 1]
                coef_m = coef / m  # [r, C]
            if not gated:  # layer norm only
                torch.mul(gy, f, out=grad_h[:, rows]).addcmul_(hr, coef_m)
                continue
            # the gate: d_g = sum_{b in g} (dL/dz_b) h_b; then through the sigmoid and the invariants
            if ln_scale is None:
                dz = e
                f1, f2 = gate, None
            else:
                gate_coef = gate * coef_m  # [4, r, C]
                dz = e.mul_(f).addcmul_(gate_coef, n2)
                f1, f2 = gate * f, gate_coef.mul_(gate)  # gy and h factors of dL/dz_b gate_g
            dpre = dz.mul_(torch.addcmul(gate, gate, gate, value=-1))  # d * gate (1 - gate)
            grad_shift += dpre.sum(1)
            grad_scale += (dpre * inv).sum(1)
            dinv = dpre.mul_(scale)
            w = dinv / inv if not ctx.squared else dinv * 2  # h_b factor of the invariants' gradient, grades > 0
            w[0] = 0
            f2 = w if f2 is None else f2.add_(w)
            gh = torch.mul(gy, f1.index_select(0, idx["grades"]), out=grad_h[:, rows])
            gh.addcmul_(hr, f2.index_select(0, idx["grades"]))
            gh[0] += dinv[0]  # inv_0 = h_0
        return grad_h, grad_scale, grad_shift, grad_ln, None


class CompactMLP(torch.autograd.Function):
    """A one-layer Clifford MLP on a compact input (vectors and scalars), read out, as one Function on CPU tensors:
    ``read(last(gate_norm(skip + GP_w(left(x), normalise_s(right(x))))))``, the values and gradients of
    ``CliffordMLP``'s layers one by one. Each direction is one compiled pass over the rows
    (``native.compact_mlp_forward`` / ``_backward``): a row's three input maps (the scalars into blade 0, the vectors
    into blades 1-3), the product over its 16 compact terms, the gate, the layer norm and the read, none of it as a
    separate tensor op; backward recomputes the row's intermediates from the input and keeps nothing else.

    Arguments: ``vectors [..., Cv, 3]``, ``scalars [..., S]`` (any leading dims: the rows), ``read = (n_vectors,
    n_scalars)``, ``squared`` (the gate's invariant), then the parameters: left weight, right weight and bias, skip
    weight and bias, path weights, norm gate, gate scale and shift, layer-norm scale (or None), last weight and
    bias."""

    @staticmethod
    def forward(ctx, vectors, scalars, read, squared, *params):
        ctx.save_for_backward(vectors, scalars, *params)
        ctx.read, ctx.squared = read, squared
        return native.compact_mlp_forward(vectors, scalars, read, params, squared, EPS)

    @staticmethod
    def backward(ctx, grad_v, grad_s):
        vectors, scalars, *params = ctx.saved_tensors
        grad_vectors, grad_scalars, grads = native.compact_mlp_backward(
            grad_v, grad_s, vectors, scalars, ctx.read, params, ctx.squared, EPS, ctx.needs_input_grad[:2])
        return grad_vectors, grad_scalars, None, None, *grads
