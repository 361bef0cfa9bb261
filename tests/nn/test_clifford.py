"""The algebra is Cl(3,0), and every Clifford layer commutes with rotations and reflections."""

import pytest
import torch

from dist_hyena.nn import CliffordLayerNorm, CliffordLinear, CliffordMLP, GatedNonlinearity, GeometricProduct, algebra
from tests.helpers.equivariance import random_rotation, reflection


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
    x = torch.randn(4, 9, 5, 8, dtype=torch.float64)
    err = (layer(x @ m.T) - layer(x) @ m.T).abs().max() / layer(x).abs().max()
    assert err < 1e-12, f"{name}: {err}"


def test_layers_are_equivariant_in_float32():
    torch.manual_seed(0)
    layer = CliffordMLP(5, 3, hidden=16, n_layers=2)
    m = algebra.orthogonal_action(random_rotation()).float()
    x = 100 * torch.randn(64, 5, 8)
    ref = layer(x) @ m.T
    assert ((layer(x @ m.T) - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_embed_and_read_round_trip():
    v, s = torch.randn(2, 3, 4, 3), torch.randn(2, 3, 5)
    mv = algebra.embed(v, s)
    assert mv.shape == (2, 3, 9, 8)
    v2, s2 = algebra.read(mv, 4, 5)
    assert torch.equal(v, v2) and torch.equal(s, s2)
    with pytest.raises(ValueError, match="cannot hold"):
        algebra.read(mv, 5, 5)


def test_geometric_product_matches_the_cayley_sum_and_its_gradients(monkeypatch):
    """The chunked product equals sum_ijk a_i b_j C_ijk w(o, path) by the dense table, values and gradients,
    also when the rows do not divide into chunks."""
    from dist_hyena.nn import clifford

    monkeypatch.setattr(clifford, "_CHUNK_ROWS", 12)  # 3 tokens x 4 channels per chunk; 10 tokens below
    torch.manual_seed(0)
    layer = GeometricProduct(3, 4).double()
    a, b = torch.randn(2, 2, 5, 4, 8, dtype=torch.float64, requires_grad=True)
    g = algebra.grade_index()
    path = (g[:, None, None] * 4 + g[None, :, None]) * 4 + g[None, None, :]
    dense = (algebra.cayley_table(torch.float64) * layer.path_weight[:, path]).detach().requires_grad_()
    expected = torch.einsum("...oi,...oj,oijk->...ok", a, b, dense)
    assert torch.allclose(clifford._ChannelBilinear.apply(a, b, dense), expected, atol=1e-12)
    assert torch.autograd.gradcheck(clifford._ChannelBilinear.apply, (a, b, dense))
