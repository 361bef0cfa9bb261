"""The EGNN baseline (mixer='egnn', Satorras et al. 2021): E(3)- and permutation-equivariant in float64, the shapes
of both heads, built by build_model (one process only), and it learns the 5-body task in a short run."""

from types import SimpleNamespace

import pytest
import torch

from dist_hyena import HyenaConfig
from dist_hyena.baselines import EGNNBaseline, build_model
from dist_hyena.config import MIXERS
from dist_hyena.model import SE3HyenaModel
from tests.helpers.equivariance import assert_equivariant, relative_error
from tests.helpers.training import adam_losses, nbody5_batch

RECALL = dict(head="recall", vector_in=1, scalar_in=16, position_channels=())
CONFIGS = {
    "nbody": dict(),  # position, velocity; charge
    "nbody-wide": dict(vector_in=3, scalar_in=2, vector_out=2, scalar_out=3, position_channels=(0, 2), n_blocks=3),
    "recall": RECALL,
    "recall-two-vectors": dict(RECALL, vector_in=2, vector_out=2),
}


def make(name, seed=0):
    """A float64 EGNN whose coordinate updates are not near zero (the initialisation starts them at 1e-3)."""
    torch.manual_seed(seed)
    cfg = HyenaConfig(mixer="egnn", hidden_width=16, **CONFIGS[name])
    model = build_model(cfg)
    with torch.no_grad():
        for layer in model.layers:
            layer.coord[-1].weight.normal_(0.0, 0.3)
    return model.double().eval(), cfg


def inputs(cfg, batch=2, n=7, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, cfg.vector_in, 3, generator=gen, dtype=torch.float64)
    f = torch.randn(batch, n, cfg.scalar_in, generator=gen, dtype=torch.float64)
    return x, f


def kind(cfg):
    return "positions" if cfg.head == "nbody" else "vectors"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rotation_and_translation_float64(name):
    model, cfg = make(name)
    x, f = inputs(cfg)
    with torch.no_grad():
        assert_equivariant(model, x, f, cfg.position_channels, translation=10.0, tol=1e-10, outputs=kind(cfg))
        if cfg.head == "nbody":  # the pairwise messages matter: the output is far from x + a velocity multiple
            assert relative_error(model(x, f)[0][:, :, 0], x[:, :, 0]) > 1e-2


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reflection_float64(name):
    """EGNN sees vectors only through differences, norms and scalar multiples: mirrors too (E(3), not only SE(3)).
    Composed with a rotation and a translation of the position channels; the recall head's pooled vector moves
    with a translation of its coordinate channel 0."""
    model, cfg = make(name)
    x, f = inputs(cfg)
    with torch.no_grad():
        assert_equivariant(model, x, f, cfg.position_channels or (0,), translation=10.0, tol=1e-10, reflect=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_permutation_float64(name):
    model, cfg = make(name)
    x, f = inputs(cfg, n=9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, f_out = model(x, f)
        got, f_got = model(x[:, perm], f[:, perm])
    if cfg.head == "nbody":  # per token: the outputs are permuted
        out, f_out = out[:, perm], f_out[:, perm]
    assert relative_error(got, out) < 1e-10  # recall: the token mean is invariant
    assert relative_error(f_got, f_out) < 1e-10


def test_shapes_and_build():
    model, cfg = make("nbody")
    assert isinstance(model, EGNNBaseline) and len(model.layers) == cfg.n_blocks
    x, f = inputs(cfg, batch=3, n=5)
    x_out, f_out = model(x, f)
    assert x_out.shape == (3, 5, 1, 3) and f_out.shape == (3, 5, 1)
    model, cfg = make("nbody-wide")
    x_out, f_out = model(*inputs(cfg, batch=3, n=5))
    assert x_out.shape == (3, 5, 2, 3) and f_out.shape == (3, 5, 3)
    model, cfg = make("recall")
    x_out, f_out = model(*inputs(cfg, batch=3, n=11))
    assert x_out.shape == (3, 1, 3) and f_out.shape == (3, 1)
    model, cfg = make("recall-two-vectors")
    x_out, f_out = model(*inputs(cfg, batch=3, n=11))
    assert x_out.shape == (3, 2, 3) and f_out.shape == (3, 1)
    model, cfg = make("nbody")
    x_out, _ = model(*inputs(cfg, n=1))  # a lone token: no edges
    assert x_out.shape == (2, 1, 1, 3) and torch.isfinite(x_out).all()


def test_one_process_only_and_not_a_mixer_of_se3_hyena():
    cfg = HyenaConfig(mixer="egnn")
    assert isinstance(build_model(cfg, mesh=SimpleNamespace(sp=1)), EGNNBaseline)
    with pytest.raises(ValueError, match="one-process baseline"):
        build_model(cfg, mesh=SimpleNamespace(sp=2))
    with pytest.raises(ValueError, match="build_model"):
        SE3HyenaModel(cfg)


def test_short_run_lowers_the_loss():
    x, f, target = nbody5_batch(32)

    torch.manual_seed(0)
    losses = adam_losses(build_model(HyenaConfig(mixer="egnn", hidden_width=32, n_blocks=2)), x, f, target)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_baselines_have_their_own_key():
    """`baseline` selects a whole model; `mixer` names only what mixes inside SE3HyenaModel's operator. A config
    saved when the baselines were spelled as mixers reads as the same baseline."""
    assert type(build_model(HyenaConfig(baseline="egnn"))) is EGNNBaseline
    assert HyenaConfig(mixer="egnn") == HyenaConfig(baseline="egnn")
    assert "egnn" not in MIXERS and "linear" not in MIXERS
    with pytest.raises(ValueError, match="baseline"):
        HyenaConfig(baseline="transformer")
