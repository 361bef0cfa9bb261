"""SE3HyenaModel under sequence parallelism on real gloo ranks: outputs and every parameter
gradient equal the one-process run on the same full sample, and equivariance holds sharded.

Gradient convention (see dist_hyena.parallel.mappings): each rank's loss is its share of the
global loss, parameter gradients are summed over the SP group (what DeepSpeed's mpu does).
"""

import pytest
import torch
import torch.distributed as dist

from dist_hyena import HyenaConfig, SE3HyenaModel
from dist_hyena.parallel import init_mesh, ledger, shard_sequence
from dist_hyena.parallel.volume import conv_bytes
from tests.helpers.distributed import assert_parity, run_ranks
from tests.helpers.equivariance import random_rotation, relative_error, rigid_motion, rotate

HEADS = {
    "nbody": dict(head="nbody"),
    "recall": dict(head="recall", vector_in=1, scalar_in=4, n_blocks=2, scalar_width=6, hidden_width=8,
                   position_channels=()),
}


def _cases(p):
    """(head, strategy, mode, N, dtype): both strategies x modes x heads, uneven N for channels."""
    cases = []
    for head in HEADS:
        for mode in ("circular", "causal"):
            cases += [(head, "channels", mode, 4 * p + 1, torch.float64), (head, "fft", mode, 4 * p, torch.float64)]
        cases += [(head, "channels", "causal", 5 * p - 1, torch.float32),
                  (head, "fft", "circular", 5 * p, torch.float32)]
    return cases


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
    sp = SE3HyenaModel(cfg, mesh=mesh).to(dtype)
    sp.load_state_dict(full.state_dict())
    return full, sp


def _parity(mesh, head, strategy, mode, n, dtype):
    """Max error of outputs and parameter gradients (relative in float32)."""
    cfg = HyenaConfig(**HEADS[head], conv_mode=mode, sp_strategy=strategy)
    full, sp = _models(cfg, mesh, dtype)
    x, f = _inputs(cfg, n, dtype, seed=n)
    out_full = full(x, f)
    weights = _loss_weights(out_full, seed=1)
    sum(((o * w).sum() for o, w in zip(out_full, weights, strict=True))).backward()
    out_sp = sp(shard_sequence(x, mesh), shard_sequence(f, mesh))
    if head == "nbody":  # per-token outputs: this rank's block of the loss
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
    return max(errs)


def _err(a, b, relative):
    """float64: max absolute difference. float32: norm-wise relative error ||a - b|| / ||b|| of each
    output and of the whole parameter-gradient vector. (Per parameter tensor, one gate weight whose
    gradient is mostly cancellation reaches 1.7e-5 under either strategy, at the level of the
    float32 one-process model's own deviation from float64; it is summation-order noise.)"""
    a, b = a.detach().double(), b.detach().double()
    if relative:
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    return (a - b).abs().max().item()


def _equivariance(mesh, head, strategy):
    """Rotate (and translate) the full input, shard it, compare with the rotated sharded output."""
    cfg = HyenaConfig(**HEADS[head], sp_strategy=strategy)
    _, sp = _models(cfg, mesh, torch.float64)
    x, f = _inputs(cfg, 4 * mesh.sp, torch.float64, seed=5)
    gen = torch.Generator().manual_seed(11)
    q, t = random_rotation(torch.float64, gen), 10.0 * torch.randn(3, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        x_out, f_out = sp(shard_sequence(x, mesh), shard_sequence(f, mesh))
        moved = rigid_motion(x, q, t, cfg.position_channels)
        x_rot, f_rot = sp(shard_sequence(moved, mesh), shard_sequence(f, mesh))
    expected = rotate(x_out, q) + (t if head == "nbody" else 0)
    return max(relative_error(x_rot, expected), relative_error(f_rot, f_out))


def _ledger(mesh, strategy, n):
    """Ledger totals of one forward + backward of the n-body model, per (layer, op)."""
    cfg = HyenaConfig(sp_strategy=strategy)
    _, sp = _models(cfg, mesh, torch.float64)
    ledger.name_layers(sp)
    x, f = _inputs(cfg, n, torch.float64, seed=2)
    with ledger.recording() as log:
        out_x, out_f = sp(shard_sequence(x, mesh), shard_sequence(f, mesh))
        (out_x.sum() + out_f.sum()).backward()
    return log.totals()


def _all_checks(rank, world):
    mesh = init_mesh(sp=world)
    out = {"parity": {}, "equivariance": {}}
    for head, strategy, mode, n, dtype in _cases(world):
        out["parity"][(head, strategy, mode, n, str(dtype))] = _parity(mesh, head, strategy, mode, n, dtype)
    for head in HEADS:
        for strategy in ("channels", "fft"):
            out["equivariance"][(head, strategy)] = _equivariance(mesh, head, strategy)
    out["ledger"] = {s: _ledger(mesh, s, 4 * world) for s in ("channels", "fft")}
    return out


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda p: f"sp{p}")
def group(request):
    return request.param, run_ranks(_all_checks, world=request.param, timeout=200)


@pytest.mark.timeout(250)
def test_model_parity(group):
    p, results = group
    assert all(len(res["parity"]) == len(_cases(p)) for res in results)
    assert_parity(p, results)


@pytest.mark.timeout(250)
def test_equivariance_sharded(group):
    p, results = group
    for r, res in enumerate(results):
        for key, err in res["equivariance"].items():
            assert err <= 1e-10, f"sp={p} rank {r} {key}: equivariance error {err:.3e}"


@pytest.mark.timeout(250)
def test_ledger_per_layer(group):
    """Each block's conv is its own ledger layer, and its traffic is the closed-form volume."""
    p, results = group
    cfg = HyenaConfig()
    for strategy in ("channels", "fft"):
        measured: dict = {}
        for res in results:
            for key, nbytes in res["ledger"][strategy].items():
                measured[key] = measured.get(key, 0) + nbytes
        forward = conv_bytes(strategy, "circular", 4 * p, p, cfg.vector_width, cfg.scalar_width, itemsize=8,
                               batch=2)
        for i in range(cfg.n_blocks):
            layer = f"blocks.{i}.operator.context"
            got = {op: b for (name, op), b in measured.items() if name == layer}
            expected = forward | {f"{op}.backward": b for op, b in forward.items() if op != "token_counts"}
            assert got == expected, f"sp={p} {strategy} {layer}"
        # Outside the convs only the token counts (once per forward) and the centroid are reduced.
        others = {op for (name, op) in measured if not name.startswith("blocks.")}
        assert others <= {"token_counts", "all_reduce", "all_reduce.backward"}, others
