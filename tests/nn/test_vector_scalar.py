"""VectorScalarMLP: O(3)-equivariant; token chunks and the compact path change time and memory, not numbers."""

import pytest
import torch

from dist_hyena.nn import VectorScalarMLP, algebra
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


@pytest.mark.parametrize("n_layers", [0, 1, 2])
@pytest.mark.parametrize("linear_path", [False, True])
def test_compact_inputs_and_reads_equal_the_dense_multivectors(n_layers, linear_path):
    """The MLP on compact features (the zeros of the embedding skipped, only the read blades computed) gives the
    values and gradients of embed -> the dense layers -> read, also with no vector output; a parameter that only
    reaches unread outputs gets no gradient there (None) where the dense layers give it zeros."""
    torch.manual_seed(0)
    for vectors_out in (2, 0):
        mlp = VectorScalarMLP(2, 3, vectors_out, 4, hidden=6, n_layers=n_layers, linear_path=linear_path).double()
        x = torch.randn(2, 7, 2, 3, dtype=torch.float64, requires_grad=True)
        f = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
        gx, gf = torch.randn(2, 7, vectors_out, 3, dtype=torch.float64), torch.randn(2, 7, 4, dtype=torch.float64)
        results = []
        for dense in (True, False):
            mlp.zero_grad(set_to_none=True)
            x.grad = f.grad = None
            out = algebra.read(mlp.mlp(algebra.embed(x, f)), vectors_out, 4) if dense else mlp(x, f)
            torch.autograd.backward(out, [gx, gf])
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in (x, f, *mlp.parameters())]
            results.append([*(o.detach() for o in out), *grads])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    compact = algebra.Compact(x, f)
    with pytest.raises(ValueError, match="cannot hold"):
        mlp.mlp(compact, read=(3, 4))


def test_chunks_run_under_the_flop_counter(monkeypatch):
    """torch's FlopCounterMode hooks every module's inputs; the chunked recompute runs under it (the step benchmark
    counts the long-sequence step so) and counts the plain map's work plus one more forward, the recompute. (The
    counter sees tensor ops only: the MLP runs its layers one by one, as the benchmark counts it.)"""
    from torch.utils.flop_counter import FlopCounterMode

    from dist_hyena.nn.clifford import CliffordMLP

    monkeypatch.setattr(CliffordMLP, "_fusable", lambda self, x: False)

    torch.manual_seed(0)
    mlp = VectorScalarMLP(2, 3, 2, 4, hidden=6)
    x, f = torch.randn(2, 13, 2, 3, requires_grad=True), torch.randn(2, 13, 3, requires_grad=True)
    counts = {}
    for chunk in (None, 5):
        mlp.token_chunk = chunk
        for backward in (False, True):
            with FlopCounterMode(display=False) as counter:
                ox, of = mlp(x, f)
                if backward:
                    (ox.square().sum() + of.square().sum()).backward()
            counts[chunk, backward] = counter.get_total_flops()
    assert counts[None, False] > 0 and counts[5, False] == counts[None, False]
    assert counts[5, True] == counts[None, True] + counts[None, False]
