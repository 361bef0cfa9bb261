"""FFT convolutions against the direct O(N^2) sums, and their gradients."""

import pytest
import torch

from dist_hyena.ops import circular_conv, cross_conv, spectral_cross
from tests.helpers.equivariance import relative_error


def direct_conv(q, k, mode, vector):
    """u_i = (1/N) sum_j q_j (x) k_{i-j}, circular (index mod N) or causal (j <= i)."""
    n = q.shape[1]
    u = torch.zeros_like(q)
    for i in range(n):
        for j in range(n if mode == "circular" else i + 1):
            a, b = q[:, j], k[:, (i - j) % n]
            u[:, i] += torch.linalg.cross(a, b, dim=-1) if vector else a * b
    return u / n


@pytest.mark.parametrize("n", [1, 2, 7, 13, 16, 31, 64])
@pytest.mark.parametrize("mode", ["circular", "causal"])
def test_matches_direct_sum(n, mode):
    gen = torch.Generator().manual_seed(n)
    qv, kv = (torch.randn(3, n, 4, 3, dtype=torch.float64, generator=gen) for _ in range(2))
    qs, ks = (torch.randn(3, n, 5, dtype=torch.float64, generator=gen) for _ in range(2))
    assert (cross_conv(qv, kv, mode) - direct_conv(qv, kv, mode, True)).abs().max() < 1e-12
    assert (circular_conv(qs, ks, mode) - direct_conv(qs, ks, mode, False)).abs().max() < 1e-12


def test_causal_output_ignores_the_future():
    q, k = torch.randn(2, 2, 11, 2, 3, dtype=torch.float64)
    u = cross_conv(q, k, "causal")
    q2, k2 = q.clone(), k.clone()
    q2[:, 6:] += 1.0
    k2[:, 6:] -= 2.0
    assert torch.allclose(cross_conv(q2, k2, "causal")[:, :6], u[:, :6], rtol=0, atol=1e-12)
    assert not torch.allclose(cross_conv(q2, k2, "causal")[:, 6:], u[:, 6:])


def test_float32_matches_float64():
    q, k = torch.randn(2, 2, 1000, 3, 3, dtype=torch.float64)
    ref = cross_conv(q, k)
    got = cross_conv(q.float(), k.float())
    assert got.dtype == torch.float32
    assert relative_error(got.double(), ref) < 1e-5


@pytest.mark.parametrize("mode", ["circular", "causal"])
def test_gradcheck(mode):
    q, k = (torch.randn(2, 6, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b: cross_conv(a, b, mode), (q, k))
    qs, ks = (torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b: circular_conv(a, b, mode), (qs, ks))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="3-vectors"):
        cross_conv(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="equal shape"):
        circular_conv(torch.randn(1, 4, 2), torch.randn(1, 5, 2))
    with pytest.raises(TypeError, match="floating-point"):
        circular_conv(torch.ones(1, 4, 2, dtype=torch.long), torch.ones(1, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="conv mode"):
        circular_conv(torch.randn(1, 4, 2), torch.randn(1, 4, 2), "linear")


def test_spectral_cross_complex_matches_linalg_cross_and_gradchecks():
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(2, 5, 2, 3, dtype=torch.complex128, generator=gen).requires_grad_() for _ in range(2))
    assert (spectral_cross(a, b) - torch.linalg.cross(a, b, dim=-1)).abs().max() < 1e-14
    assert torch.autograd.gradcheck(spectral_cross, (a, b))
    assert torch.autograd.gradgradcheck(spectral_cross, (a, b))
    # broadcasting and strided (split) operands, as the six-step path passes them
    packed = torch.randn(2, 5, 6, dtype=torch.complex128, generator=gen)
    qa, kb = packed.split(3, -1)
    assert (spectral_cross(qa, kb[:1]) - torch.linalg.cross(qa, kb[:1].expand_as(qa), dim=-1)).abs().max() < 1e-14
