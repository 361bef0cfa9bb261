"""The compiled CPU kernels (dist_hyena/nn/native.cpp) against the eager passes they replace, and their build."""

import shutil
import warnings

import pytest
import torch

from dist_hyena.nn import fused, native


def _run(dtype, rows, channels, gated, ln, squared):
    """The product, then the gate and layer norm, forward and backward: output and every input's gradient."""
    g = torch.Generator().manual_seed(1)

    def t(*shape, rand=torch.randn):
        return rand(*shape, dtype=dtype, generator=g).requires_grad_()

    a, x, skip, w = t(8, rows, channels), t(8, rows, channels), t(8, rows, channels), t(20, channels)
    s = t(4, channels, rand=torch.rand)
    scale, shift = (t(4, channels), t(4, channels)) if gated else (None, None)
    ln_scale = t(channels) if ln else None
    y = fused.GateNorm.apply(fused.NormalisedProduct.apply(a, x, w, s, skip), scale, shift, ln_scale, squared)
    inputs = [v for v in (a, x, w, s, skip, scale, shift, ln_scale) if v is not None]
    return [y.detach(), *torch.autograd.grad(y, inputs, torch.randn(y.shape, dtype=dtype, generator=g))]


CASES = [(True, True, False), (True, True, True), (True, False, False), (True, False, True), (False, True, False)]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 5e-6)])
@pytest.mark.parametrize("gated, ln, squared", CASES)
@pytest.mark.parametrize("channels", [8, 13, 3])  # whole packs, a partial last pack, a partial pack only
def test_native_equals_the_eager_passes(monkeypatch, dtype, tol, gated, ln, squared, channels):
    """Values and gradients of both kernels equal the eager passes' (relative to each tensor's largest entry), for
    every gate / layer-norm combination and channel counts that do and do not fill the vector packs."""
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(native.ENV, mode)
        native.library.cache_clear()
        results[mode] = _run(dtype, 37, channels, gated, ln, squared)
    native.library.cache_clear()
    for eager, compiled in zip(results["0"], results["1"], strict=True):
        assert ((compiled - eager).abs().max() / eager.abs().max()).item() < tol


def test_rows_split_across_threads_give_the_same_result(monkeypatch):
    """With several torch threads the rows are split into parts, each accumulating its own parameter gradients:
    the result equals one part's up to the order of the sums."""
    monkeypatch.setenv(native.ENV, "1")
    native.library.cache_clear()
    one = _run(torch.float64, 50, 6, True, True, False)
    threads = torch.get_num_threads()
    monkeypatch.setattr(native, "_PARALLEL_MIN", 1)
    try:
        torch.set_num_threads(3)
        assert len(native._row_parts(50, 6)) == 3
        split = _run(torch.float64, 50, 6, True, True, False)
    finally:
        torch.set_num_threads(threads)
        native.library.cache_clear()
    for u, v in zip(one, split, strict=True):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-14)


def _mlp_run(dtype, rows, widths, ln, squared, compact):
    """A one-layer Clifford MLP read out, on a compact input (on CPU with the kernels: ``fused.CompactMLP``) or on
    the embedded dense multivectors (the layers one by one): outputs, then the gradients of the input and of every
    parameter (zeros where autograd gives None)."""
    from dist_hyena.nn import algebra
    from dist_hyena.nn.clifford import CliffordMLP

    cv, scalars, hidden, nv, ns = widths
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)  # the layers' initialisation
    mlp = CliffordMLP(cv + scalars, nv + ns + 1, hidden, layer_norm=ln, gate_invariant="squared_norm" if squared
                      else "norm").to(dtype)
    with torch.no_grad():
        for q in mlp.parameters():
            q.add_(0.3 * torch.randn(q.shape, dtype=dtype, generator=g))
    x = torch.randn(rows, cv, 3, dtype=dtype, generator=g).requires_grad_()
    f = torch.randn(rows, scalars, dtype=dtype, generator=g).requires_grad_()
    out = mlp(algebra.Compact(x, f) if compact else algebra.embed(x, f), read=(nv, ns))
    grads = [torch.randn(o.shape, dtype=dtype, generator=g) for o in out]
    params = [x, f, *mlp.parameters()]
    got = torch.autograd.grad(out, params, grads, allow_unused=True)
    zeros = [torch.zeros_like(q) if d is None else d for q, d in zip(params, got, strict=True)]
    return [o.detach() for o in out] + zeros


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 5e-6)])
@pytest.mark.parametrize("ln, squared", [(True, False), (True, True), (False, False), (False, True)])
@pytest.mark.parametrize("widths", [(1, 8, 16, 3, 24), (2, 3, 13, 0, 5), (3, 1, 3, 2, 1)],
                         ids=["nbody", "partial-pack", "tiny"])
def test_compact_mlp_equals_the_dense_layers(monkeypatch, dtype, tol, ln, squared, widths):
    """``fused.CompactMLP`` (the input maps, the product's 16 compact terms, gate, layer norm and read in compiled
    passes) gives the outputs and the gradients of the dense layers one by one, relative to each tensor's largest
    entry: with and without the layer norm, both gate invariants, hidden widths that do and do not fill the packs,
    no vector output."""
    monkeypatch.setenv(native.ENV, "1")
    native.library.cache_clear()
    fused_run = _mlp_run(dtype, 41, widths, ln, squared, compact=True)
    dense_run = _mlp_run(dtype, 41, widths, ln, squared, compact=False)
    native.library.cache_clear()
    for u, v in zip(fused_run, dense_run, strict=True):
        assert u.shape == v.shape
        if v.numel() and v.abs().max() > 0:
            assert ((u - v).abs().max() / v.abs().max()).item() < tol
        else:
            assert not u.any()


def test_compact_mlp_rows_split_across_threads(monkeypatch):
    """The fused MLP with its rows split across threads (per-part parameter gradients, summed) equals one part's."""
    monkeypatch.setenv(native.ENV, "1")
    native.library.cache_clear()
    one = _mlp_run(torch.float64, 50, (1, 8, 16, 3, 24), True, False, compact=True)
    threads = torch.get_num_threads()
    monkeypatch.setattr(native, "_PARALLEL_MIN", 1)
    try:
        torch.set_num_threads(3)
        split = _mlp_run(torch.float64, 50, (1, 8, 16, 3, 24), True, False, compact=True)
    finally:
        torch.set_num_threads(threads)
        native.library.cache_clear()
    for u, v in zip(one, split, strict=True):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-14)


def test_a_failed_build_falls_back_or_fails_as_asked(monkeypatch, tmp_path):
    """No working compiler, or a cache folder that cannot be made: the layers warn once, naming the cause, and run
    the eager passes; with DIST_HYENA_NATIVE=1 the failure is an error that names the setting. Nothing half-written
    is left in the cache."""
    monkeypatch.setenv("DIST_HYENA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a 'compiler' that always fails
    monkeypatch.setenv(native.ENV, "")
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="eager passes"):
            assert native.library() is None
        x = torch.randn(8, 4, 3)
        assert not native.supports(x)
        monkeypatch.setenv(native.ENV, "1")
        native.library.cache_clear()
        with pytest.raises(RuntimeError, match="DIST_HYENA_NATIVE=1 but the native kernels could not be built"):
            native.library()
        assert list(tmp_path.iterdir()) == []
        blocked = tmp_path / "not-a-folder"  # a cache that cannot be created: a file where the folder should be
        blocked.write_text("")
        monkeypatch.setenv("DIST_HYENA_CACHE", str(blocked))
        monkeypatch.delenv("CXX")
        monkeypatch.setenv(native.ENV, "")
        native.library.cache_clear()
        with pytest.warns(RuntimeWarning, match="not-a-folder"):
            assert native.library() is None
    finally:
        native.library.cache_clear()


def test_the_build_is_cached_and_switchable(monkeypatch, tmp_path):
    """A build is found again by its key (source, flags, compiler) in $DIST_HYENA_CACHE and not redone (the library
    built for this session, copied there under its name, is returned untouched); DIST_HYENA_NATIVE=0 switches the
    kernels off without a warning."""
    built = native.build()  # the default cache's (.ci/install builds it)
    monkeypatch.setenv("DIST_HYENA_CACHE", str(tmp_path))
    cached = tmp_path / built.name
    shutil.copy(built, cached)
    mtime = cached.stat().st_mtime_ns
    assert native.build() == cached and cached.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [built.name]
    monkeypatch.setenv(native.ENV, "0")
    native.library.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not native.supports(torch.randn(8, 2, 2))
    finally:
        native.library.cache_clear()
