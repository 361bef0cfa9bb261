"""The linear baseline (mixer='linear'): SE(3)- and permutation-equivariant, linear in the input vectors, built by
build_model and by the trainer's export path; recall accuracy reads the nearest vector of the sequence."""

import pytest
import torch

from dist_hyena import HyenaConfig
from dist_hyena.baselines import LinearBaseline, build_model
from dist_hyena.model import SE3HyenaModel
from dist_hyena.tasks import recall_hits
from tests.helpers.equivariance import assert_equivariant, relative_error


def _trained_like(model: LinearBaseline) -> LinearBaseline:
    with torch.no_grad():
        model.token_weight.normal_()
        model.mean_weight.normal_()
    return model.double()


def test_nbody_linear_baseline_is_se3_and_permutation_equivariant():
    torch.manual_seed(0)
    cfg = HyenaConfig(mixer="linear")
    model = _trained_like(build_model(cfg))
    assert isinstance(model, LinearBaseline) and isinstance(build_model(HyenaConfig()), SE3HyenaModel)
    x, f = torch.randn(3, 5, 2, 3, dtype=torch.float64), torch.randn(3, 5, 1, dtype=torch.float64)
    out, f_out = model(x, f)
    assert out.shape == (3, 5, 1, 3) and f_out.shape == (3, 5, 1)
    assert_equivariant(model, x, f, [0], translation=1.0, tol=1e-12)
    perm = torch.randperm(5)
    assert relative_error(model(x[:, perm], f[:, perm])[0], out[:, perm]) < 1e-12


def test_linear_baseline_starts_at_identity_and_is_linear():
    x = torch.randn(2, 5, 2, 3)
    out, _ = LinearBaseline(HyenaConfig(mixer="linear"))(x, torch.zeros(2, 5, 1))
    assert torch.allclose(out[:, :, 0], x[:, :, 0], atol=1e-6)  # untrained: the input position
    model = _trained_like(LinearBaseline(HyenaConfig(mixer="linear")))
    a, b = torch.randn(2, 5, 2, 3, dtype=torch.float64), torch.randn(2, 5, 2, 3, dtype=torch.float64)
    f = torch.zeros(2, 5, 1, dtype=torch.float64)
    # affine in the inputs: out(a + b) - out(b) = out(a) - out(0)
    lhs = model(a + b, f)[0] - model(b, f)[0]
    rhs = model(a, f)[0] - model(torch.zeros_like(a), f)[0]
    assert relative_error(lhs, rhs) < 1e-12


def test_recall_linear_baseline_rotates():
    cfg = HyenaConfig(mixer="linear", head="recall", vector_in=1, scalar_in=16, position_channels=())
    model = _trained_like(build_model(cfg))
    x, f = torch.randn(2, 9, 1, 3, dtype=torch.float64), torch.randn(2, 9, 16, dtype=torch.float64)
    assert model(x, f)[0].shape == (2, 1, 3)
    assert_equivariant(model, x, f, (), tol=1e-12, outputs="vectors")


def test_recall_hits_reads_the_nearest_vector_of_the_sequence():
    vocab = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    x = torch.stack([vocab[[0, 1, 2, 0]], vocab[[0, 1, 2, 0]]])[:, :, None]  # [2, 4, 1, 3]
    x[:, 0] = 0.0  # a pad token never counts as a candidate
    y = torch.stack([vocab[1], vocab[2]])[:, None]  # targets [2, 1, 3]
    pred = torch.tensor([[0.1, 1.8, 0.0], [0.0, 1.9, 0.2]])[:, None]  # near vocab[1] both times
    assert recall_hits(pred, x, y).tolist() == [True, False]


def test_se3_hyena_model_refuses_the_linear_mixer():
    with pytest.raises(ValueError, match="build_model"):
        SE3HyenaModel(HyenaConfig(mixer="linear"))
