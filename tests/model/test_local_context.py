"""The local geometric context (docs/design.md §2.4): the vectorised layer against a direct loop over pairs and taps,
its equivariance and the model's with ``local_window > 0``, token chunks, and ``local_window = 0`` unchanged."""

import math

import pytest
import torch
from torch import nn

from dist_hyena import HyenaConfig, SE3HyenaModel
from dist_hyena.local_context import LocalContext, taps
from tests.helpers.equivariance import assert_equivariant, reflection, relative_error, rotate

RECALL = dict(head="recall", vector_in=1, scalar_in=16, n_blocks=2, scalar_width=6, hidden_width=16,
              position_channels=())


def randomise_outputs(module: nn.Module, seed: int = 0) -> None:
    """A fresh layer's output maps are zero (it adds nothing); give them weights so that the checks see it."""
    gen = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, LocalContext):
            for p in (*layer.to_vectors.parameters(), *layer.to_scalars.parameters()):
                with torch.no_grad():
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def layer_and_inputs(window, mode, n, cv=2, d=3, n_pos=1, batch=2, seed=0, cutoff=None):
    torch.manual_seed(seed)
    layer = LocalContext(window, mode, cv, d, n_pos, hidden=8, cutoff=cutoff).double()
    randomise_outputs(layer, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, n, cv, 3, generator=gen, dtype=torch.float64)
    f = torch.randn(batch, n, d, generator=gen, dtype=torch.float64)
    pos = torch.randn(batch, n, n_pos, 3, generator=gen, dtype=torch.float64) if n_pos else None
    return layer, x, f, pos


def direct(layer: LocalContext, x, f, pos):
    """The definition, one pair and one tap at a time."""
    b, n, cv, _ = x.shape
    offsets = taps(layer.window, layer.mode)
    dx, df = torch.zeros_like(x), torch.zeros_like(f)
    for s in range(b):
        for i in range(n):
            for k, delta in enumerate(offsets):
                j = i + delta
                if layer.mode == "causal" and j < 0:
                    continue
                j %= n
                rel = [pos[s, j, c] - pos[s, i, c] for c in range(layer.p)] if pos is not None else []
                vectors = rel + [x[s, i, c] for c in range(cv)] + [x[s, j, c] for c in range(cv)]
                gram = [torch.dot(vectors[a], vectors[c]) for a in range(len(vectors))
                        for c in range(a, len(vectors))]
                invariants = torch.cat([torch.stack(gram), f[s, i], f[s, j]])
                m = nn.functional.silu(layer.edge_in(invariants) + layer.tap_embedding[k])
                m = nn.functional.silu(layer.edge_hidden(m))
                envelope = 1.0
                if layer.cutoff is not None:
                    r = rel[0].norm().item()
                    envelope = 0.5 * (math.cos(math.pi * r / layer.cutoff) + 1) if r < layer.cutoff else 0.0
                coef = layer.to_vectors(m).view(cv, len(vectors))
                dx[s, i] += envelope * coef @ torch.stack(vectors) / len(offsets)
                df[s, i] += envelope * layer.to_scalars(m) / len(offsets)
    return dx, df


@pytest.mark.parametrize("mode", ["circular", "causal"])
@pytest.mark.parametrize("window,n", [(1, 6), (2, 9), (3, 4), (2, 1), (4, 3), (2, 5)])
def test_equals_direct_loop(mode, window, n):
    """≤ 1e-12 in float64, N smaller than 2w + 1 included (taps alias mod N)."""
    layer, x, f, pos = layer_and_inputs(window, mode, n)
    expected = direct(layer, x, f, pos)
    for chunk in (None, 2):
        layer.token_chunk = chunk
        got = layer(x, f, pos, [n])
        for g, e in zip(got, expected, strict=True):
            assert (g - e).abs().max().item() <= 1e-12, f"chunk={chunk}"


@pytest.mark.parametrize("mode", ["circular", "causal"])
def test_cutoff_equals_direct_loop(mode):
    """``cutoff``: each tap weighted by the cosine envelope of its distance; pairs past it add exactly nothing
    (the cutoff 1.5 sits inside the spread of the random inputs' distances, so both kinds of pair occur)."""
    layer, x, f, pos = layer_and_inputs(2, mode, 9, cutoff=1.5)
    distances = (pos[:, :, None, 0] - pos[:, None, :, 0]).norm(dim=-1)
    assert (distances < 1.5).any() and (distances > 1.5).any()
    expected = direct(layer, x, f, pos)
    for chunk in (None, 2):
        layer.token_chunk = chunk
        for g, e in zip(layer(x, f, pos, [9]), expected, strict=True):
            assert (g - e).abs().max().item() <= 1e-12, f"chunk={chunk}"
    far = pos.clone()
    far[:, 4] += 100.0  # token 4 far from everyone: its taps, and its neighbours' taps to it, vanish
    dx, df = layer(x, f, far, [9])
    assert dx[:, 4].abs().max().item() == 0.0 and df[:, 4].abs().max().item() == 0.0
    near = LocalContext(2, mode, 2, 3, 1, hidden=8).double()
    near.load_state_dict(layer.state_dict())
    assert (near(x, f, far, [9])[0][:, 4].abs().max().item()) > 1e-3  # without the cutoff it does not


def test_without_positions_equals_direct_loop():
    layer, x, f, _ = layer_and_inputs(2, "circular", 7, n_pos=0)
    for g, e in zip(layer(x, f, None, [7]), direct(layer, x, f, None), strict=True):
        assert (g - e).abs().max().item() <= 1e-12


@pytest.mark.parametrize("mode", ["circular", "causal"])
def test_token_chunks_same_values_and_gradients(mode):
    layer, x, f, pos = layer_and_inputs(3, mode, 23)
    x.requires_grad_()
    results = []
    for chunk in (None, 5):
        layer.token_chunk = chunk
        layer.zero_grad()
        x.grad = None
        dx, df = layer(x, f, pos, [23])
        (dx.pow(2).sum() + df.sin().sum()).backward()
        results.append([dx, df, x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    for a, b in zip(*results, strict=True):
        assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize("mode", ["circular", "causal"])
def test_layer_equivariant(mode):
    """Rotations, the mirror and translations (positions only) move the update as they move vectors."""
    layer, x, f, pos = layer_and_inputs(2, mode, 11)
    gen = torch.Generator().manual_seed(5)
    t = 10.0 * torch.randn(3, dtype=torch.float64, generator=gen)
    dx, df = layer(x, f, pos, [11])
    for q in (torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0], reflection()):
        dx_g, df_g = layer(rotate(x, q), f, rotate(pos, q) + t, [11])
        assert relative_error(dx_g, rotate(dx, q)) <= 1e-12
        assert relative_error(df_g, df) <= 1e-12


MODEL_CONFIGS = {
    "nbody-circular": dict(local_window=2, vector_width=2),
    "nbody-causal": dict(local_window=3, conv_mode="causal"),
    "nbody-chunked": dict(local_window=2, mlp_token_chunk=5),
    "recall": dict(RECALL, local_window=1),
    "nbody-relative": dict(local_window=2, vector_width=2, local_cutoff=1.5, positions_in_stream=False,
                           linear_path=True),
}


def make_model(kwargs, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = HyenaConfig(**kwargs)
    model = SE3HyenaModel(cfg).double()
    randomise_outputs(model)
    return model.to(dtype).eval(), cfg


def model_inputs(cfg, n, dtype=torch.float64, batch=2):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n, cfg.vector_in, 3, generator=gen, dtype=torch.float64).to(dtype)
    f = torch.randn(batch, n, cfg.scalar_in, generator=gen, dtype=torch.float64).to(dtype)
    return x, f


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_model_equivariant_float64(name):
    model, cfg = make_model(MODEL_CONFIGS[name])
    x, f = model_inputs(cfg, 13)
    kind = "positions" if cfg.head == "nbody" else "vectors"
    with torch.no_grad():
        for reflect in (False, True):
            assert_equivariant(model, x, f, cfg.position_channels, translation=10.0, tol=1e-10, outputs=kind,
                               reflect=reflect)


@pytest.mark.parametrize("name", ["nbody-circular", "recall"])
def test_model_equivariant_float32_long_and_far(name):
    model, cfg = make_model(MODEL_CONFIGS[name], torch.float32)
    x, f = model_inputs(cfg, 4096, torch.float32, batch=1)
    kind = "positions" if cfg.head == "nbody" else "vectors"
    with torch.no_grad():
        assert_equivariant(model, x, f, cfg.position_channels, translation=1e3, tol=1e-5, outputs=kind)


def test_the_local_context_changes_the_output():
    """With weights, the layer is not a no-op (a guard on the equivariance checks above)."""
    model, cfg = make_model(MODEL_CONFIGS["nbody-circular"])
    x, f = model_inputs(cfg, 13)
    with torch.no_grad():
        with_local = model(x, f)[0]
        for block in model.blocks:
            block.local.to_vectors.weight.zero_()
            block.local.to_vectors.bias.zero_()
            block.local.to_scalars.weight.zero_()
            block.local.to_scalars.bias.zero_()
        without = model(x, f)[0]
    assert (with_local - without).abs().max().item() > 1e-3


def test_window_zero_is_the_paper_model():
    """``local_window = 0``: the same parameter names and shapes as before the option existed; a fresh layer
    (zero output maps) leaves the block's outputs exactly as they are without it."""
    base = SE3HyenaModel(HyenaConfig())
    wide = SE3HyenaModel(HyenaConfig(local_window=2))
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    assert not any(".local." in k for k in shapes)
    assert shapes == {k: v.shape for k, v in wide.state_dict().items() if ".local." not in k}
    wide.load_state_dict(base.state_dict(), strict=False)
    x, f = model_inputs(base.cfg, 9, torch.float32)
    with torch.no_grad():
        for a, b in zip(base(x, f), wide(x, f), strict=True):
            assert torch.equal(a, b)


def test_relative_model_starts_static_and_reads_only_relative_positions():
    """``positions_in_stream=False`` with positions the only vector input: an untrained model (zero local
    output maps) predicts exactly its input positions, and a trained one is exactly translation-equivariant."""
    cfg = HyenaConfig(**MODEL_CONFIGS["nbody-relative"], vector_in=1)
    model = SE3HyenaModel(cfg).double().eval()
    x, f = model_inputs(cfg, 11)
    with torch.no_grad():
        assert (model(x, f)[0] - x[:, :, :1]).abs().max().item() <= 1e-12
        randomise_outputs(model)
        moved = model(x, f)[0]
        assert (moved - x[:, :, :1]).abs().max().item() > 1e-3
        assert (model(x + 5.0, f)[0] - 5.0 - moved).abs().max().item() <= 1e-12


def test_bad_window():
    with pytest.raises(ValueError, match="local_window"):
        HyenaConfig(local_window=-1)
    with pytest.raises(ValueError, match="local_cutoff"):
        HyenaConfig(local_window=1, local_cutoff=0.0)
    with pytest.raises(ValueError, match="positions_in_stream"):
        HyenaConfig(positions_in_stream=False)
