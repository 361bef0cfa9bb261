"""SequenceParallelConv and the collectives on real gloo ranks against the one-process ops.

One spawned group per P runs every case (both strategies x both modes x float64/float32,
even and uneven N, the error paths) and returns its errors; the tests assert on them here.
"""

import pytest
import torch

from dist_hyena.ops import circular_conv, cross_conv
from dist_hyena.parallel import (
    SequenceParallelConv,
    gather_sequence,
    init_mesh,
    ledger,
    shard_sequence,
    sp_all_reduce,
)
from dist_hyena.parallel.volume import conv_bytes
from tests.helpers.distributed import assert_parity, run_ranks, summed_over_ranks, value_error
from tests.helpers.equivariance import relative_error

# (strategy, n_vector, n_scalar): "channels" needs >= P channel groups; "fft" runs the paper's Cv = 1.
CASES = [("channels", 2, 3), ("fft", 1, 0), ("fft", 2, 3)]
MODES = ("circular", "causal")


def _lengths(strategy, p):
    """Small N: for channels one divisible by P and one not; for fft divisible only, N = P included (N < P²: some
    ranks' pieces of the m axis are empty)."""
    return [4 * p, 4 * p + 1] if strategy == "channels" else [4 * p, 5 * p, p]


def _full_inputs(b, n, cv, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, n, cv, 3), (b, n, cv, 3), (b, n, d), (b, n, d), (b, n, cv, 3), (b, n, d)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def _max_err(a, b, relative):
    if a.numel() == 0:
        return 0.0
    return relative_error(a, b) if relative else (a - b).abs().max().item()


def _mix(conv, q_v, k_v, q_s, k_s):
    """The conv called as the operator calls every mixer; a convolution leaves the values to the operator."""
    return conv(q_v, k_v, None, q_s, k_s, None)


def _conv_case(mesh, strategy, mode, cv, d, n, dtype, seed):
    """Output and input-gradient errors of the SP conv vs the full-sequence ops on this rank's block."""
    q_v, k_v, q_s, k_s, w_v, w_s = _full_inputs(2, n, cv, d, dtype, seed)
    full = [t.clone().requires_grad_() for t in (q_v, k_v, q_s, k_s)]
    u_v = cross_conv(full[0], full[1], mode)
    u_s = circular_conv(full[2], full[3], mode) if d else full[2] * full[3]  # MKL rejects zero-width FFTs
    ((u_v * w_v).sum() + (u_s * w_s).sum()).backward()
    local = [shard_sequence(t, mesh).clone().requires_grad_() for t in (q_v, k_v, q_s, k_s)]
    conv = SequenceParallelConv(mesh, cv, d, mode, strategy)
    assert conv.strategy == strategy
    l_v, l_s = _mix(conv, *local)
    # Each rank's loss is its block's share of the global loss (the package's gradient convention).
    ((l_v * shard_sequence(w_v, mesh)).sum() + (l_s * shard_sequence(w_s, mesh)).sum()).backward()
    rel = dtype == torch.float32
    errs = [_max_err(l_v, shard_sequence(u_v, mesh), rel), _max_err(l_s, shard_sequence(u_s, mesh), rel)]
    errs += [_max_err(lo.grad, shard_sequence(fu.grad, mesh), rel) for lo, fu in zip(local, full, strict=True)]
    return max(errs)


def _ledger_case(mesh, strategy, mode, cv, d, n):
    """This rank's ledger totals for one forward + backward of the conv, in float64."""
    q_v, k_v, q_s, k_s, _, _ = _full_inputs(1, n, cv, d, torch.float64, 7)
    local = [shard_sequence(t, mesh).clone().requires_grad_() for t in (q_v, k_v, q_s, k_s)]
    conv = SequenceParallelConv(mesh, cv, d, mode, strategy)
    with ledger.recording() as log:
        u_v, u_s = _mix(conv, *local)
        (u_v.square().sum() + u_s.square().sum()).backward()
    return {op: nbytes for (_, op), nbytes in log.totals().items()}


def _all_checks(rank, world):
    mesh = init_mesh(sp=world)
    out = {"parity": {}, "ledger": {}}
    for strategy, cv, d in CASES:
        if strategy == "channels" and cv + d < world:
            continue
        for mode in MODES:
            for n in _lengths(strategy, world):
                out["parity"][(strategy, mode, cv, d, n, "float64")] = _conv_case(
                    mesh, strategy, mode, cv, d, n, torch.float64, seed=n)
            n = _lengths(strategy, world)[-1]
            out["parity"][(strategy, mode, cv, d, n, "float32")] = _conv_case(
                mesh, strategy, mode, cv, d, n, torch.float32, seed=n)
            out["ledger"][(strategy, mode, cv, d, n)] = _ledger_case(mesh, strategy, mode, cv, d, n)
    x = torch.randn(2, 4 * world + 1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out["fft_uneven"] = value_error(
        lambda: _mix(SequenceParallelConv(mesh, 1, 0, "circular", "fft"), *[shard_sequence(t, mesh) for t in (
            x[..., None, :], x[..., None, :], x[..., :0], x[..., :0])]))
    out["channels_too_few"] = value_error(lambda: SequenceParallelConv(mesh, 1, 0, strategy="channels"))
    out["auto"] = (SequenceParallelConv(mesh, 1, 0).strategy, SequenceParallelConv(mesh, world, 0).strategy)
    # gather_sequence undoes shard_sequence; its backward sums every rank's gradient of the block.
    xr = x.clone().requires_grad_()
    gathered = gather_sequence(shard_sequence(xr, mesh), mesh)
    (gathered * (rank + 1)).sum().backward()
    out["gather"] = (_max_err(gathered, x, False), _max_err(shard_sequence(xr.grad, mesh),
                                                              torch.full_like(shard_sequence(x, mesh),
                                                                              world * (world + 1) / 2), False))
    t = torch.full((3,), float(rank + 1), requires_grad=True)
    total = sp_all_reduce(t, mesh)
    (total * (rank + 1)).sum().backward()
    out["all_reduce"] = (total.tolist(), t.grad.tolist())
    return out


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda p: f"sp{p}")
def group(request):
    p = request.param
    return p, run_ranks(_all_checks, world=p, timeout=150)


@pytest.mark.timeout(200)
def test_conv_parity(group):
    p, results = group
    cases = results[0]["parity"]
    assert {k[0] for k in cases} == ({"channels", "fft"} if p <= 5 else {"fft"})
    assert any(k[4] % p for k in cases), "an uneven N for channels is covered"
    assert_parity(p, results)


@pytest.mark.timeout(200)
def test_ledger_matches_theory(group):
    p, results = group
    for key, _ in results[0]["ledger"].items():
        strategy, mode, cv, d, n = key
        measured = summed_over_ranks([res["ledger"][key] for res in results])
        # float64 inputs: 8-byte numbers on the wire for both strategies.
        forward = conv_bytes(strategy, mode, n, p, cv, d, itemsize=8)
        expected = dict(forward)
        expected.update({f"{op}.backward": b for op, b in forward.items() if op != "token_counts"})
        assert measured == expected, f"sp={p} {key}"


@pytest.mark.timeout(200)
def test_errors_and_strategy_choice(group):
    p, results = group
    for r, res in enumerate(results):
        assert res["fft_uneven"] is not None and "divisible by sp" in res["fft_uneven"], (r, res["fft_uneven"])
        assert f"N={4 * p + 1}" in res["fft_uneven"]
        assert res["channels_too_few"] is not None and "at least sp=" in res["channels_too_few"]
        assert res["auto"] == ("fft", "channels")


@pytest.mark.timeout(200)
def test_gather_and_all_reduce(group):
    p, results = group
    for rank, res in enumerate(results):
        assert res["gather"] == (0.0, 0.0), f"rank {rank}: {res['gather']}"
        total, grad = res["all_reduce"]
        assert total == [p * (p + 1) / 2] * 3
        assert grad == [p * (p + 1) / 2] * 3
