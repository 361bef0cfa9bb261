"""VectorScalarMLP: O(3)-equivariant; token chunks change memory, not numbers."""

import pytest
import torch

from dist_hyena.nn import VectorScalarMLP
from tests.helpers.equivariance import assert_equivariant


@pytest.mark.parametrize("grad", [True, False])
def test_token_chunks_give_the_plain_outputs_and_gradients(grad):
    """Same outputs, input gradients and parameter gradients with and without chunks (13 tokens in chunks
    of 5, so the last chunk is short), also when one output (the vectors) is empty."""
    torch.manual_seed(0)
    for vectors_out in (2, 0):
        mlp = VectorScalarMLP(2, 3, vectors_out, 4, hidden=6, n_layers=2).double()
        x = torch.randn(2, 13, 2, 3, dtype=torch.float64, requires_grad=True)
        f = torch.randn(2, 13, 3, dtype=torch.float64, requires_grad=True)
        gx, gf = torch.randn(2, 13, vectors_out, 3, dtype=torch.float64), torch.randn(2, 13, 4, dtype=torch.float64)
        results = []
        for chunk in (None, 5):
            mlp.token_chunk = chunk
            mlp.zero_grad()
            x.grad = f.grad = None
            with torch.set_grad_enabled(grad):
                ox, of = mlp(x, f)
            assert ox.shape == (2, 13, vectors_out, 3) and of.shape == (2, 13, 4)
            grads = []
            if grad:
                torch.autograd.backward([ox, of], [gx, gf])
                grads = [x.grad, f.grad, *(p.grad for p in mlp.parameters())]
            results.append([ox.detach(), of.detach(), *(g.clone() for g in grads)])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
@pytest.mark.parametrize("chunk", [None, 5])
def test_equivariant_float64(reflect, chunk):
    """Vectors out rotate (and mirror) with vectors in, scalars out stay; chunked or not."""
    torch.manual_seed(0)
    mlp = VectorScalarMLP(2, 3, 2, 4, hidden=6, n_layers=2, token_chunk=chunk).double()
    x, f = torch.randn(2, 13, 2, 3, dtype=torch.float64), torch.randn(2, 13, 3, dtype=torch.float64)
    with torch.no_grad():
        assert_equivariant(mlp, x, f, (), tol=1e-10, outputs="vectors", reflect=reflect)
