"""SE3HyenaModel on one process: equivariance of every configuration, the reflection it does not
respect, and clear errors for bad input."""

import pytest
import torch

from dist_hyena import HyenaConfig, SE3HyenaModel
from dist_hyena.ops import cross_conv
from tests.helpers.equivariance import assert_equivariant, reflection, relative_error, rigid_motion, rotate

RECALL = dict(head="recall", vector_in=1, scalar_in=16, n_blocks=3, scalar_width=16, hidden_width=32,
              position_channels=())
CONFIGS = {
    "nbody-hyena-circular": dict(),
    "nbody-hyena-causal": dict(conv_mode="causal"),
    "nbody-attention": dict(mixer="attention"),
    "nbody-sdpa": dict(mixer="sdpa"),
    "nbody-mlp-token-chunks": dict(mlp_token_chunk=7),
    "nbody-wide-stream": dict(vector_width=3, scalar_width=5, mlp_layers=2),
    "nbody-linear-path-no-layer-norm": dict(linear_path=True, layer_norm=False),
    "nbody-gate-squared-norm": dict(gate_invariant="squared_norm"),
    "nbody-no-global-mixer": dict(mixer="none"),
    "recall-hyena": RECALL,
    "recall-context-norm-local": dict(RECALL, context_norm=True, local_window=1),
    "nbody-context-norm": dict(context_norm=True),
    "recall-query-readout": dict(RECALL, recall_readout="query", context_norm=True, local_window=1),
    "recall-source-gate": dict(RECALL, source_gate=True, context_norm=True, local_window=1),
    "recall-attention": dict(RECALL, mixer="attention", conv_mode="causal"),
}


def make(cfg_kwargs, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = HyenaConfig(**cfg_kwargs)
    return SE3HyenaModel(cfg).to(dtype).eval(), cfg


def inputs(cfg, batch, n, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, cfg.vector_in, 3, generator=gen, dtype=torch.float64).to(dtype)
    f = torch.randn(batch, n, cfg.scalar_in, generator=gen, dtype=torch.float64).to(dtype)
    return x, f


def outputs_kind(cfg):
    return "positions" if cfg.head == "nbody" else "vectors"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_equivariant_float64(name):
    model, cfg = make(CONFIGS[name])
    x, f = inputs(cfg, 2, 37)
    with torch.no_grad():
        assert_equivariant(model, x, f, cfg.position_channels, translation=10.0, tol=1e-10,
                           outputs=outputs_kind(cfg))


@pytest.mark.parametrize("name", ["nbody-hyena-circular", "nbody-hyena-causal", "recall-hyena",
                                  "recall-context-norm-local"])
def test_equivariant_float32_long_and_far(name):
    """N = 4096 tokens, translations of 1e3: relative error of float32 stays <= 1e-5."""
    model, cfg = make(CONFIGS[name], torch.float32)
    x, f = inputs(cfg, 1, 4096, torch.float32)
    with torch.no_grad():
        assert_equivariant(model, x, f, cfg.position_channels, translation=1e3, tol=1e-5, outputs=outputs_kind(cfg))


def test_attention_equivariant_float32():
    model, cfg = make(CONFIGS["nbody-attention"], torch.float32)
    x, f = inputs(cfg, 1, 512, torch.float32)
    with torch.no_grad():
        assert_equivariant(model, x, f, cfg.position_channels, translation=1e3, tol=1e-5)


def mirrored_error(name):
    model, cfg = make(CONFIGS[name])
    x, f = inputs(cfg, 2, 37)
    mirror = reflection()
    with torch.no_grad():
        expected = rotate(model(x, f)[0], mirror)
        got = model(rigid_motion(x, mirror, torch.zeros(3, dtype=x.dtype), cfg.position_channels), f)[0]
    return relative_error(got, expected)


def test_what_a_reflection_does():
    """A mirror M (det -1) is where the cross products show.

    - The long convolution's output is a pseudovector: cross_conv(Mq, Mk) = -M cross_conv(q, k).
    - In the SE(3)-Hyena operator that pseudovector only enters through a second cross product,
      x + u x v, and (-Mu) x (Mv) = M (u x v): the signs cancel, so the Hyena model *is* mirror-
      equivariant as well (E(3)), to round-off.
    - The vector-attention baseline crosses three times (q x k, S x v, u x v): its output is a
      pseudovector field, so it is SE(3)- but not E(3)-equivariant.
    """
    mirror = reflection()
    q, k = torch.randn(2, 2, 9, 1, 3, dtype=torch.float64)
    u = cross_conv(q, k)
    assert torch.allclose(cross_conv(rotate(q, mirror), rotate(k, mirror)), -rotate(u, mirror), atol=1e-12)
    assert mirrored_error("nbody-hyena-circular") < 1e-10
    assert mirrored_error("nbody-attention") > 1e-6  # round-off is ~1e-15


def test_output_shapes():
    model, cfg = make(CONFIGS["nbody-hyena-circular"])
    x, f = inputs(cfg, 3, 10)
    x_out, f_out = model(x, f)
    assert x_out.shape == (3, 10, 1, 3) and f_out.shape == (3, 10, 1)
    model, cfg = make(RECALL)
    x, f = inputs(cfg, 3, 10)
    x_out, f_out = model(x, f)
    assert x_out.shape == (3, 1, 3) and f_out.shape == (3, 1)


def test_causal_model_ignores_future_tokens():
    model, cfg = make(CONFIGS["nbody-hyena-causal"])
    x, f = inputs(cfg, 1, 20)
    # The centroid is a global mean, so hold it fixed: change the future without moving the centroid.
    x2 = x.clone()
    x2[:, 12:, 1] += 1.0  # velocities are not centred
    f2 = f.clone()
    f2[:, 12:] -= 3.0
    with torch.no_grad():
        a, b = model(x, f)[0], model(x2, f2)[0]
    assert torch.allclose(a[:, :12], b[:, :12], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_activation_checkpointing_gives_the_same_gradients():
    model, cfg = make(dict(activation_checkpointing=True))
    model.train()
    x, f = inputs(cfg, 2, 16)
    model(x, f)[0].square().sum().backward()
    with_ckpt = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.cfg.activation_checkpointing = False
    model(x, f)[0].square().sum().backward()
    for a, p in zip(with_ckpt, model.parameters(), strict=True):
        assert (a is None) == (p.grad is None)  # the head's scalar bias: only the unread scalar output has it
        assert a is None or torch.allclose(a, p.grad, rtol=1e-12, atol=1e-14)


def test_gradcheck_small_model():
    model, cfg = make(dict(hidden_width=4, gate_width=2, scalar_width=2, n_blocks=1))
    x, f = inputs(cfg, 1, 5)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: model(a, f)[0], (x,))


@pytest.mark.parametrize(
    "x_shape, f_shape, dtype, message",
    [
        ((2, 8, 2, 2), (2, 8, 1), torch.float64, r"\[B, N, C, 3\]"),
        ((2, 8, 3, 3), (2, 8, 1), torch.float64, "vector_in=2"),
        ((2, 8, 2, 3), (2, 8, 4), torch.float64, "scalar_in"),
        ((2, 8, 2, 3), (2, 9, 1), torch.float64, "disagree"),
        ((2, 8, 2, 3), (2, 8, 1), torch.float32, "dtype"),
        ((2, 0, 2, 3), (2, 0, 1), torch.float64, "no tokens"),
    ],
)
def test_bad_shapes_and_dtypes(x_shape, f_shape, dtype, message):
    model, _ = make({})
    with pytest.raises((ValueError, TypeError), match=message):
        model(torch.randn(x_shape, dtype=dtype), torch.randn(f_shape, dtype=dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(bad):
    model, cfg = make({})
    x, f = inputs(cfg, 1, 8)
    x[0, 3, 1, 2] = bad
    with pytest.raises(ValueError, match="input x contains NaN or Inf"):
        model(x, f)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(head="classifier"), "head"),
        (dict(mixer="mamba"), "mixer"),
        (dict(conv_mode="linear"), "conv_mode"),
        (dict(sp_strategy="ring"), "sp_strategy"),
        (dict(n_blocks=0), "n_blocks"),
        (dict(mlp_token_chunk=0), "mlp_token_chunk"),
        (dict(position_channels=(5,)), "position_channels"),
        (dict(context_norm=True, conv_mode="causal"), "causal"),
        (dict(head="recall", recall_readout="first"), "recall_readout"),
        (dict(gate_invariant="abs"), "gate_invariant"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HyenaConfig(**kwargs)


def test_a_bare_block_takes_the_token_chunk_from_its_config():
    """Execution settings are constructor arguments: a HyenaBlock built alone chunks its MLPs and local context as
    the model's blocks do, and computes the same numbers as the unchunked block."""
    from dist_hyena.local_context import LocalContext
    from dist_hyena.model import HyenaBlock
    from dist_hyena.nn import VectorScalarMLP

    blocks = {}
    for chunk in (None, 5):
        torch.manual_seed(0)
        blocks[chunk] = HyenaBlock(HyenaConfig(local_window=1, mlp_token_chunk=chunk)).double()
    chunked = [m for m in blocks[5].modules() if isinstance(m, VectorScalarMLP | LocalContext)]
    assert len(chunked) == 5 and all(m.token_chunk == 5 for m in chunked)
    g = torch.Generator().manual_seed(1)
    x, f = torch.randn(2, 12, 1, 3, generator=g, dtype=torch.float64), torch.randn(2, 12, 8, generator=g,
                                                                                   dtype=torch.float64)
    pos = torch.randn(2, 12, 1, 3, generator=g, dtype=torch.float64)
    for a, b in zip(blocks[None](x, f, pos), blocks[5](x, f, pos), strict=True):
        assert relative_error(b, a) < 1e-12


@pytest.mark.parametrize("mixer, reflect", [("hyena", False), ("hyena", True), ("none", True), ("sdpa", False),
                                            ("attention", False)])
def test_operator_and_block_equivariant_float64(mixer, reflect):
    """The layers on their own, as the model is tested: the operator and the block on the residual stream
    (vectors rotate, scalars stay; the stream has no positions, so no translation); the block also with the local
    context, whose pairwise vectors come from a stream channel here. Mirrors too where the context is a
    pseudovector (the long convolution's cross products): the attentions' context, crossed with v, is not."""
    from dist_hyena.model import HyenaBlock, HyenaOperator

    cfg = HyenaConfig(mixer=mixer, vector_width=2, scalar_width=4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 11, 2, 3, generator=g, dtype=torch.float64)
    f = torch.randn(2, 11, 4, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    operator, block = HyenaOperator(cfg).double(), HyenaBlock(cfg).double()
    local = HyenaBlock(HyenaConfig(mixer=mixer, vector_width=2, scalar_width=4, local_window=2)).double()

    def local_block(x, f):
        return local(x, f, x[:, :, :1])

    with torch.no_grad():
        for layer in (operator, block, local_block):
            assert_equivariant(layer, x, f, (), tol=1e-10, outputs="vectors", reflect=reflect)


def test_zero_update_starts_at_the_input_positions():
    """zero_update: an untrained n-body model predicts its input positions (the static reference), and its
    head still has a gradient to move away from them."""
    torch.manual_seed(0)
    model = SE3HyenaModel(HyenaConfig(zero_update=True, linear_path=True)).double()
    x, f = torch.randn(2, 7, 2, 3, dtype=torch.float64) * 3 + 10, torch.randn(2, 7, 1, dtype=torch.float64)
    out, _ = model(x, f)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0], rtol=0, atol=1e-12)
    (out - torch.randn_like(out)).square().sum().backward()
    assert model.head.mlp.net[-1].weight.grad.abs().sum() > 0
