"""The algebra is Cl(3,0), and every Clifford layer commutes with rotations and reflections."""

import pytest
import torch

from dist_hyena.nn import CliffordLayerNorm, CliffordLinear, CliffordMLP, GatedNonlinearity, GeometricProduct, algebra
from dist_hyena.nn.algebra import GRADES
from tests.helpers.equivariance import random_rotation, reflection, relative_error


def test_cayley_table_is_cl30():
    e = torch.eye(8, dtype=torch.float64)
    gp = algebra.geometric_product
    e1, e2, e3 = e[1], e[2], e[3]
    for v in (e1, e2, e3):
        assert torch.equal(gp(v, v), e[0])  # Euclidean signature
    assert torch.equal(gp(e1, e2), e[4]) and torch.equal(gp(e2, e1), -e[4])  # e1 e2 = e12 = -e2 e1
    assert torch.equal(gp(gp(e1, e2), e3), e[7])  # e123
    assert torch.equal(gp(e[7], e[7]), -e[0])  # pseudoscalar squares to -1
    a, b, c = torch.randn(3, 8, dtype=torch.float64)
    assert torch.allclose(gp(gp(a, b), c), gp(a, gp(b, c)), atol=1e-12)  # associative
    assert algebra.GRADES == (0, 1, 1, 1, 2, 2, 2, 3)


@pytest.mark.parametrize("det", [1, -1])
def test_orthogonal_action_is_an_algebra_automorphism(det):
    q = random_rotation() if det == 1 else reflection() @ random_rotation()
    m = algebra.orthogonal_action(q)
    a, b = torch.randn(2, 8, dtype=torch.float64)
    assert torch.allclose(m @ m.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(algebra.geometric_product(m @ a, m @ b), m @ algebra.geometric_product(a, b), atol=1e-12)
    assert torch.isclose(m[7, 7], torch.tensor(float(det), dtype=torch.float64))


def act(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The 8x8 blade action ``m`` on blade-major multivectors ``[8, ...]``."""
    return torch.einsum("ab,b...->a...", m, x)


LAYERS = {
    "linear": lambda: CliffordLinear(5, 7),
    "geometric_product": lambda: GeometricProduct(5, 7),
    "gate": lambda: GatedNonlinearity(5),
    "norm": lambda: CliffordLayerNorm(5),
    "mlp": lambda: CliffordMLP(5, 3, hidden=6, n_layers=2),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("det", [1, -1])
def test_layers_are_o3_equivariant_on_full_multivectors(name, det):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    q = random_rotation() if det == 1 else reflection() @ random_rotation()
    m = algebra.orthogonal_action(q)
    x = torch.randn(8, 4, 9, 5, dtype=torch.float64)  # blade-major: [8, batch, tokens, channels]
    err = relative_error(layer(act(m, x)), act(m, layer(x)))
    assert err < 1e-12, f"{name}: {err}"


def test_layers_are_equivariant_in_float32():
    torch.manual_seed(0)
    layer = CliffordMLP(5, 3, hidden=16, n_layers=2)
    m = algebra.orthogonal_action(random_rotation()).float()
    x = 100 * torch.randn(8, 64, 5)
    ref = act(m, layer(x))
    assert relative_error(layer(act(m, x)), ref) < 1e-5


def test_embed_and_read_round_trip():
    v, s = torch.randn(2, 3, 4, 3), torch.randn(2, 3, 5)
    mv = algebra.embed(v, s)
    assert mv.shape == (8, 2, 3, 9)
    assert torch.equal(mv[1:4, ..., :4], v.movedim(-1, 0)) and torch.equal(mv[0, ..., 4:], s)
    assert not mv[4:].any() and not mv[0, ..., :4].any() and not mv[1:4, ..., 4:].any()
    v2, s2 = algebra.read(mv, 4, 5)
    assert torch.equal(v, v2) and torch.equal(s, s2)
    with pytest.raises(ValueError, match="cannot hold"):
        algebra.read(mv, 5, 5)


def test_geometric_product_matches_the_cayley_sum_and_its_gradients(monkeypatch, kernels):
    """The sparse chunked product equals sum_ij a_i b_j C_ijk w(o, path(i, j, k)) by the dense Cayley table,
    values and gradients, also when the rows do not divide into chunks; the paths it never reaches have no
    weight at all."""
    from dist_hyena.nn import fused

    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 12)  # 3 rows x 4 channels per chunk; 10 rows below
    torch.manual_seed(0)
    layer = GeometricProduct(3, 4).double()
    assert layer.path_weight.shape == (20, 4)
    x = torch.randn(8, 2, 5, 3, dtype=torch.float64)  # 10 rows
    g = algebra.GRADES
    index = {p: n for n, p in enumerate(algebra.grade_paths())}
    table = algebra.cayley_table(torch.float64)
    dense = torch.zeros(8, 8, 8, 4, dtype=torch.float64)  # [i, j, k, o]
    for i, j, k in table.nonzero().tolist():
        dense[i, j, k] = table[i, j, k] * layer.path_weight.detach()[index[g[i], g[j], g[k]]]
    with torch.no_grad():
        product = layer(x) * 2**0.5 - layer.skip(x)
        expected = torch.einsum("i...o,j...o,ijko->k...o", layer.left(x), layer._normalise(layer.right(x)), dense)
    assert torch.allclose(product, expected, atol=1e-12)
    w = layer.path_weight.detach().clone().requires_grad_()
    a, b, skip = torch.randn(3, 8, 10, 4, dtype=torch.float64, requires_grad=True)
    s = torch.rand(4, 4, dtype=torch.float64, requires_grad=True)  # the normalisation's sigmoid(norm_gate)
    assert torch.autograd.gradcheck(fused.NormalisedProduct.apply, (a, b, w, s, skip))


@pytest.mark.parametrize("invariant", ["norm", "squared_norm"])
@pytest.mark.parametrize("parts", ["gate", "norm", "gate+norm"])
def test_fused_gate_and_layer_norm_match_autograd_and_gradcheck(monkeypatch, invariant, parts, kernels):
    """fused.GateNorm (gate, layer norm, or both in one pass) equals the textbook formulas with autograd, values and
    gradients, also when the rows do not divide into chunks; and passes gradcheck."""
    from dist_hyena.nn import fused

    monkeypatch.setattr(fused, "GATE_CHUNK_ELEMENTS", 12)  # 2 rows x 5 channels per chunk; 11 rows below
    torch.manual_seed(0)
    squared = invariant == "squared_norm"
    scale, shift = (1 + 0.3 * torch.randn(2, 4, 5, dtype=torch.float64)).requires_grad_()
    ln_scale = (1 + 0.3 * torch.randn(5, dtype=torch.float64)).requires_grad_()
    h = torch.randn(8, 11, 5, dtype=torch.float64, requires_grad=True)
    g = algebra.grade_index()

    def reference(h, scale, shift, ln_scale):
        if scale is not None:
            sq = torch.stack([h[g == k].square().sum(0) for k in range(4)])
            inv = torch.cat([h[:1], sq[1:] if squared else torch.sqrt(sq[1:] + 1e-12)])
            h = h * torch.sigmoid(scale[:, None] * inv + shift[:, None])[g]
        if ln_scale is not None:
            h = h * ln_scale / (torch.sqrt(h.square().sum(0) + 1e-12).mean(-1, keepdim=True) + 1e-6)
        return h

    args = {"gate": (h, scale, shift, None), "norm": (h, None, None, ln_scale),
            "gate+norm": (h, scale, shift, ln_scale)}[parts]
    inputs = [t for t in args if t is not None]
    grad = torch.randn_like(h)
    got, expected = fused.GateNorm.apply(*args, squared), reference(*args)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    for u, v in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(expected, inputs, grad), strict=True):
        assert torch.allclose(u, v, atol=1e-12, rtol=0)

    def fn(*ts):
        it = iter(ts)
        return fused.GateNorm.apply(*(None if t is None else next(it) for t in args), squared)

    assert torch.autograd.gradcheck(fn, inputs)


def _reference_mlp(mlp: CliffordMLP, x: torch.Tensor) -> torch.Tensor:
    """The MLP by the textbook formulas on multivectors last (``[..., C, 8]``), from the layer's parameters: the
    dense Cayley table for the product, masks for the grades (the layout and arithmetic of the first release)."""
    g = algebra.grade_index()
    onehot = torch.nn.functional.one_hot(g, 4).to(x.dtype)  # [8, 4]
    index = {p: n for n, p in enumerate(algebra.grade_paths())}
    table = algebra.cayley_table(x.dtype)

    def linear(layer, v):
        y = torch.einsum("...ib,iob->...ob", v, layer.weight.permute(1, 2, 0)[:, :, g])
        return y if layer.bias is None else y + torch.einsum("o,b->ob", layer.bias, torch.eye(8, dtype=x.dtype)[0])

    def grade_norms(v):
        return torch.sqrt(v.square() @ onehot + 1e-12)

    for layer in mlp.net:
        if isinstance(layer, GeometricProduct):
            a, b = linear(layer.left, x), linear(layer.right, x)
            s = torch.sigmoid(layer.norm_gate.T)  # [o, 4]
            b = b / ((s * (grade_norms(b) - 1) + 1) @ onehot.T)
            w = torch.zeros(layer.path_weight.shape[1], 8, 8, 8, dtype=x.dtype)
            for i, j, k in table.nonzero().tolist():
                w[:, i, j, k] = table[i, j, k] * layer.path_weight[index[GRADES[i], GRADES[j], GRADES[k]]]
            x = (linear(layer.skip, x) + torch.einsum("...oi,...oj,oijk->...ok", a, b, w)) / 2**0.5
        elif isinstance(layer, GatedNonlinearity):
            inv = torch.cat([x[..., :1], grade_norms(x)[..., 1:]], -1)
            x = x * (torch.sigmoid(layer.scale.T * inv + layer.shift.T) @ onehot.T)
        elif isinstance(layer, CliffordLayerNorm):
            norm = torch.sqrt(x.square().sum(-1) + 1e-12).mean(-1, keepdim=True)
            x = x / (norm[..., None] + 1e-6) * layer.scale[:, None]
        else:
            x = linear(layer, x)
    return x


def test_mlp_equals_the_textbook_formulas(kernels):
    """The blade-major layers with their sparse product compute what the first release's dense, channel-major
    layers computed (float64, round-off), with trained-looking (random) gates and norms."""
    torch.manual_seed(0)
    mlp = CliffordMLP(5, 3, hidden=6, n_layers=2).double()
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 9, 5, 8, dtype=torch.float64)
    expected = _reference_mlp(mlp, x)
    got = mlp(x.permute(3, 0, 1, 2)).permute(1, 2, 3, 0)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0), (got - expected).abs().max()
