"""SE3HyenaModel under sequence parallelism on real gloo ranks: outputs and every parameter
gradient equal the one-process run on the same full sample, and equivariance holds sharded;
also with the local geometric context (``local_window = w > 0``, docs/design.md §2.4 and §3.6), whose
halo exchange is proven here inside the model: uneven blocks, w past a block and past N; and with the context
normalised over the sample (``context_norm``, one all-reduce per block) and the recall head reading the query token.

Gradient convention (see dist_hyena.parallel.mappings): each rank's loss is its share of the
global loss, parameter gradients are summed over the SP group (what DeepSpeed's mpu does).
"""

import pytest
import torch
import torch.distributed as dist

from dist_hyena import HyenaConfig, SE3HyenaModel
from dist_hyena.parallel import init_mesh, ledger, shard_sequence, split_sizes
from dist_hyena.parallel.volume import conv_bytes, halo_bytes
from tests.helpers.distributed import assert_parity, run_ranks, summed_over_ranks
from tests.helpers.equivariance import assert_equivariant
from tests.model.test_local_context import randomise_outputs

HEADS = {
    "nbody": dict(head="nbody"),
    "recall": dict(head="recall", vector_in=1, scalar_in=4, n_blocks=2, scalar_width=6, hidden_width=8,
                   position_channels=()),
}
# Local-context cases only: the recall model with the context normalised over the sample (an SP all-reduce).
LOCAL_HEADS = {**HEADS, "recall-context-norm": dict(HEADS["recall"], context_norm=True),
               "recall-query": dict(HEADS["recall"], context_norm=True, recall_readout="query"),
               "recall-source-gate": dict(HEADS["recall"], context_norm=True, source_gate=True),
               "nbody-relative": dict(HEADS["nbody"], local_cutoff=2.0, positions_in_stream=False, linear_path=True)}


def _cases(p):
    """(head, strategy, mode, N, dtype): both strategies x modes x heads, uneven N for channels."""
    cases = []
    for head in HEADS:
        for mode in ("circular", "causal"):
            cases += [(head, "channels", mode, 4 * p + 1, torch.float64), (head, "fft", mode, 4 * p, torch.float64)]
        cases += [(head, "channels", "causal", 5 * p - 1, torch.float32),
                  (head, "fft", "circular", 5 * p, torch.float32)]
    return cases


def _local_cases(p):
    """(head, strategy, mode, N, w, token_chunk, dtype) with the local context, float64: both heads x strategies
    x modes with w past a block, so each halo spans several ranks (channels: N = 2p + 1, uneven, w = 4 > every
    block of 2 or 3 tokens; fft: N = p², blocks of p, w = p + 1); w < a block (N = 3p + 1) with token chunks
    of 2 (a chunk's first global index); w >= N (taps alias, the halo holds the same token several times).

    fft blocks are kept at M = N / p >= p tokens: with M < p the six-step plan gives some rank an empty piece
    of the m axis and torch.fft fails on it (MKL "Inconsistent configuration parameters"; e.g. p = 3, N = 6)."""
    f64 = torch.float64
    cases = []
    for head in HEADS:
        for mode in ("circular", "causal"):
            cases += [(head, "channels", mode, 2 * p + 1, 4, None, f64), (head, "fft", mode, p * p, p + 1, None, f64)]
    return cases + [("nbody", "channels", "causal", 3 * p + 1, 2, 2, f64),
                    ("recall-context-norm", "channels", "circular", 3 * p + 1, 1, None, f64),
                    ("recall-context-norm", "fft", "circular", p * p, 2, None, f64),
                    ("recall-query", "channels", "circular", 2 * p + 1, 1, None, f64),
                    ("recall-source-gate", "channels", "circular", 2 * p + 3, 1, None, f64),
                    ("nbody-relative", "channels", "circular", 2 * p + 1, 4, None, f64),
                    ("nbody", "channels", "circular", p + 1, p + 3, None, f64),
                    ("recall", "fft", "causal", p * p, p * p + 1, None, f64)]


def _inputs(cfg, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, cfg.vector_in, 3, generator=gen, dtype=torch.float64) + 3.0  # off-centre sample
    f = torch.randn(2, n, cfg.scalar_in, generator=gen, dtype=torch.float64)
    return x.to(dtype), f.to(dtype)


def _loss_weights(out, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in out]


def _models(cfg, mesh, dtype):
    torch.manual_seed(0)
    full = SE3HyenaModel(cfg).to(dtype)
    randomise_outputs(full)  # the local contexts' zero output maps (no-op without them): else they add nothing
    sp = SE3HyenaModel(cfg, mesh=mesh).to(dtype)
    sp.load_state_dict(full.state_dict())
    return full, sp


def _parity(mesh, head, strategy, mode, n, dtype, window=0, chunk=None):
    """Max error of outputs and parameter gradients (relative in float32); and the norm of the local
    contexts' parameter gradients in the one-process run (0 without them; > 0 shows they take part)."""
    cfg = HyenaConfig(**LOCAL_HEADS[head], conv_mode=mode, sp_strategy=strategy, local_window=window,
                      mlp_token_chunk=chunk)
    full, sp = _models(cfg, mesh, dtype)
    x, f = _inputs(cfg, n, dtype, seed=n)
    out_full = full(x, f)
    weights = _loss_weights(out_full, seed=1)
    sum(((o * w).sum() for o, w in zip(out_full, weights, strict=True))).backward()
    out_sp = sp(shard_sequence(x, mesh), shard_sequence(f, mesh))
    if cfg.head == "nbody":  # per-token outputs: this rank's block of the loss
        expected = [shard_sequence(o, mesh) for o in out_full]
        loss = sum((o * shard_sequence(w, mesh)).sum() for o, w in zip(out_sp, weights, strict=True))
    else:  # one output per sample, replicated on every SP rank: each holds 1/sp of its loss
        expected = list(out_full)
        loss = sum((o * w).sum() for o, w in zip(out_sp, weights, strict=True)) / mesh.sp
    loss.backward()
    rel = dtype == torch.float32
    errs = [_err(o, e, rel) for o, e in zip(out_sp, expected, strict=True)]
    grads_sp = []
    for p_sp in sp.parameters():
        grad = p_sp.grad.clone()
        dist.all_reduce(grad, group=mesh.sp_group)
        grads_sp.append(grad.flatten())
    errs.append(_err(torch.cat(grads_sp), torch.cat([p.grad.flatten() for p in full.parameters()]), rel))
    local = [p.grad.flatten() for name, p in full.named_parameters() if ".local." in name]
    return max(errs), torch.cat(local).norm().item() if local else 0.0


def _err(a, b, relative):
    """float64: max absolute difference. float32: norm-wise relative error ||a - b|| / ||b|| of each
    output and of the whole parameter-gradient vector. (Per parameter tensor, one gate weight whose
    gradient is mostly cancellation reaches 1.7e-5 under either strategy, at the level of the
    float32 one-process model's own deviation from float64; it is summation-order noise.)"""
    a, b = a.detach().double(), b.detach().double()
    if relative:
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    return (a - b).abs().max().item()


def _equivariance(mesh, head, strategy, n=None, mode="circular", window=0):
    """Rotate (and translate) the full input, shard it, compare with the rotated sharded output."""
    cfg = HyenaConfig(**HEADS[head], sp_strategy=strategy, conv_mode=mode, local_window=window)
    _, sp = _models(cfg, mesh, torch.float64)
    x, f = _inputs(cfg, n or 4 * mesh.sp, torch.float64, seed=5)

    def sharded(x, f):
        return sp(shard_sequence(x, mesh), shard_sequence(f, mesh))

    with torch.no_grad():
        return assert_equivariant(sharded, x, f, cfg.position_channels, translation=10.0, tol=1e-10, seed=11,
                                  outputs="positions" if head == "nbody" else "vectors")


def _ledger(mesh, cfg: HyenaConfig, n, seed):
    """Ledger totals of one forward + backward of the n-body model of ``cfg``, per (layer, op)."""
    _, sp = _models(cfg, mesh, torch.float64)
    ledger.name_layers(sp)
    x, f = _inputs(cfg, n, torch.float64, seed=seed)
    with ledger.recording() as log:
        out_x, out_f = sp(shard_sequence(x, mesh), shard_sequence(f, mesh))
        (out_x.sum() + out_f.sum()).backward()
    return log.totals()


def _local_equivariance_cases(p):
    """(head, strategy, mode, N, w): one per head, each halo spanning several ranks."""
    return [("nbody", "channels", "circular", 2 * p + 1, 4), ("recall", "fft", "causal", p * p, p + 1)]


LEDGER_WINDOW = 3


def _all_checks(rank, world):
    mesh = init_mesh(sp=world)
    out = {"parity": {}, "equivariance": {}}
    for head, strategy, mode, n, dtype in _cases(world):
        out["parity"][(head, strategy, mode, n, str(dtype))] = _parity(mesh, head, strategy, mode, n, dtype)[0]
    for head in HEADS:
        for strategy in ("channels", "fft"):
            out["equivariance"][(head, strategy)] = _equivariance(mesh, head, strategy)
    out["ledger"] = {s: _ledger(mesh, HyenaConfig(sp_strategy=s), 4 * world, seed=2) for s in ("channels", "fft")}
    out["local_parity"], out["local_signal"] = {}, {}
    for head, strategy, mode, n, w, chunk, dtype in _local_cases(world):
        key = (head, strategy, mode, n, w, chunk, str(dtype))
        out["local_parity"][key], out["local_signal"][key] = _parity(mesh, head, strategy, mode, n, dtype, w, chunk)
    out["local_equivariance"] = {case: _equivariance(mesh, *case[:2], n=case[3], mode=case[2], window=case[4])
                                 for case in _local_equivariance_cases(world)}
    out["local_ledger"] = {  # the n-body model with local_window = LEDGER_WINDOW
        mode: _ledger(mesh, HyenaConfig(sp_strategy="channels", conv_mode=mode, local_window=LEDGER_WINDOW),
                      2 * world + 1, seed=3)
        for mode in ("circular", "causal")}
    return out


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda p: f"sp{p}")
def group(request):
    return request.param, run_ranks(_all_checks, world=request.param, timeout=300)


@pytest.mark.timeout(350)
def test_model_parity(group):
    p, results = group
    assert all(len(res["parity"]) == len(_cases(p)) for res in results)
    assert_parity(p, results)


@pytest.mark.timeout(350)
def test_equivariance_sharded(group):
    p, results = group
    for r, res in enumerate(results):
        for key, err in res["equivariance"].items():
            assert err <= 1e-10, f"sp={p} rank {r} {key}: equivariance error {err:.3e}"


def _layer_traffic(measured: dict, layer: str) -> dict:
    """The group's bytes per op of one ledger layer, from its totals per (layer, op)."""
    return {op: b for (name, op), b in measured.items() if name == layer}


def _with_backward(forward: dict) -> dict:
    """Each forward op's volume and its backward mirror's (the same bytes)."""
    return forward | {f"{op}.backward": b for op, b in forward.items()}


@pytest.mark.timeout(350)
def test_ledger_per_layer(group):
    """Each block's conv is its own ledger layer, and its traffic is the closed-form volume."""
    p, results = group
    cfg = HyenaConfig()
    for strategy in ("channels", "fft"):
        measured = summed_over_ranks([res["ledger"][strategy] for res in results])
        forward = conv_bytes(strategy, "circular", 4 * p, p, cfg.vector_width, cfg.scalar_width, itemsize=8,
                               batch=2, counts_given=True)
        for i in range(cfg.n_blocks):
            layer = f"blocks.{i}.operator.context"
            assert _layer_traffic(measured, layer) == _with_backward(forward), f"sp={p} {strategy} {layer}"
        # Outside the convs only the token counts (once per forward, not per block) and the centroid are reduced.
        others = {op for (name, op) in measured if not name.startswith("blocks.")}
        assert others <= {"token_counts", "all_reduce", "all_reduce.backward"}, others


@pytest.mark.timeout(350)
def test_local_context_parity(group):
    """local_window > 0: outputs and every parameter gradient equal one process (float64, <= 1e-10)."""
    p, results = group
    assert all(len(res["local_parity"]) == len(_local_cases(p)) for res in results)
    assert_parity(p, results, section="local_parity")
    for key, signal in results[0]["local_signal"].items():  # the layers' randomised outputs reach the loss
        assert signal > 1e-3, f"sp={p} {key}: local-context gradients {signal:.3e}, the check would be trivial"


@pytest.mark.timeout(350)
def test_local_context_equivariance_sharded(group):
    p, results = group
    for r, res in enumerate(results):
        assert len(res["local_equivariance"]) == len(_local_equivariance_cases(p))
        for key, err in res["local_equivariance"].items():
            assert err <= 1e-10, f"sp={p} rank {r} {key}: equivariance error {err:.3e}"


@pytest.mark.timeout(350)
def test_local_context_ledger(group):
    """Each block's local context is its own ledger layer and moves the closed-form halo volume, forward and
    backward; the convs' traffic is unchanged by it."""
    p, results = group
    cfg = HyenaConfig()
    n = 2 * p + 1
    row_numel = 3 * len(cfg.position_channels) + 3 * cfg.vector_width + cfg.scalar_width
    for mode in ("circular", "causal"):
        measured = summed_over_ranks([res["local_ledger"][mode] for res in results])
        halo = halo_bytes(mode, split_sizes(n, p), LEDGER_WINDOW, row_numel, itemsize=8, batch=2)
        assert halo > 0
        conv = conv_bytes("channels", mode, n, p, cfg.vector_width, cfg.scalar_width, itemsize=8, batch=2,
                          counts_given=True)
        for i in range(cfg.n_blocks):
            layer = f"blocks.{i}.local"
            assert _layer_traffic(measured, layer) == _with_backward({"halo": halo}), f"sp={p} {mode} {layer}"
            layer = f"blocks.{i}.operator.context"
            assert _layer_traffic(measured, layer) == _with_backward(conv), f"sp={p} {mode} {layer}"
        others = {op for (name, op) in measured if not name.startswith("blocks.")}
        assert others <= {"token_counts", "all_reduce", "all_reduce.backward"}, others
