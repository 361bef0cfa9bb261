"""halo_exchange on real gloo ranks against direct indexing of the full sequence in one process.

One spawned group per P runs every case (both modes, even and uneven N, w from 1 to past N,
with and without feature dims) and returns, per case, the forward and backward errors and
its ledger totals; sp = 1 runs in this process on a mesh without process groups.
"""

import pytest
import torch

from dist_hyena.parallel import Mesh, halo_exchange, init_mesh, ledger, shard_sequence, split_sizes
from dist_hyena.parallel.volume import halo_bytes
from tests.helpers.distributed import run_ranks, summed_over_ranks, value_error

MODES = ("circular", "causal")
BATCH = 2


def _cases(p):
    """(mode, N, w, feat): N = P (one token a rank), uneven N, and w of 1, a block, past a block, N, past 2N."""
    out = []
    for n in sorted({p, 2 * p + 1, 5 * p + 2}):
        block = max(split_sizes(n, p))
        for w in sorted({1, 2, block, block + 1, n, 2 * n + 1}):
            for mode in MODES:
                out.append((mode, n, w, (2, 3) if (n + w) % 2 else ()))
    return out


def _reference_ext(x, counts, w, mode, rank):
    """Rank ``rank``'s extended block by indexing the full ``x [B, N, *feat]`` (the spec, written out)."""
    a = sum(counts[:rank])
    right = w if mode == "circular" else 0
    index = a - w + torch.arange(w + counts[rank] + right)
    if mode == "circular":
        return x[:, index % x.shape[1]]
    valid = (index >= 0).reshape(1, -1, *[1] * (x.dim() - 2))
    return x[:, index.clamp(min=0)] * valid


def _case(mesh, mode, n, w, feat, seed):
    """Errors of one halo_exchange on this rank: forward (exact), input gradient; and its ledger totals."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, n, *feat, generator=gen, dtype=torch.float64)
    counts = split_sizes(n, mesh.sp)
    right = w if mode == "circular" else 0
    upstream = [torch.randn(BATCH, w + c + right, *feat, generator=gen, dtype=torch.float64) for c in counts]
    full = x.clone().requires_grad_()
    # The global loss is every rank's term; each rank backpropagates its own.
    sum((_reference_ext(full, counts, w, mode, r) * g).sum() for r, g in enumerate(upstream)).backward()
    block = shard_sequence(x, mesh).clone().requires_grad_()
    with ledger.recording() as log:
        ext = halo_exchange(block, counts, w, mode, mesh, layer="halo_test")
        (ext * upstream[mesh.sp_rank]).sum().backward()
    reference = _reference_ext(x, counts, w, mode, mesh.sp_rank)
    forward_exact = ext.shape == reference.shape and torch.equal(ext, reference)
    grad_err = (block.grad - shard_sequence(full.grad, mesh)).abs().max().item()
    calls = sum(op == "halo" for _, op, _ in log.entries)
    return {"forward_exact": forward_exact, "grad_err": grad_err, "calls": calls,
            "ledger": {op: nbytes for (_, op), nbytes in log.totals().items()}}


def _checks(mesh):
    out = {case: _case(mesh, *case, seed=i) for i, case in enumerate(_cases(mesh.sp))}
    counts = split_sizes(2 * mesh.sp + 1, mesh.sp)
    block = torch.zeros(1, counts[mesh.sp_rank] + 1)
    out["bad_block"] = value_error(lambda: halo_exchange(block, counts, 1, "causal", mesh))
    out["bad_mode"] = value_error(lambda: halo_exchange(block[:, 1:], counts, 1, "same", mesh))
    out["bad_w"] = value_error(lambda: halo_exchange(block[:, 1:], counts, 0, "causal", mesh))
    return out


def _all_checks(rank, world):
    return _checks(init_mesh(sp=world))


@pytest.fixture(scope="module", params=[1, 2, 3, 4], ids=lambda p: f"sp{p}")
def group(request):
    p = request.param
    if p == 1:  # no process group at all: pure local indexing
        return p, [_checks(Mesh(world=1, dp=1, sp=1, rank=0, sp_group=None, dp_group=None))]
    return p, run_ranks(_all_checks, world=p, timeout=150)


def _case_results(res):
    return {k: v for k, v in res.items() if isinstance(k, tuple)}


@pytest.mark.timeout(200)
def test_halo_parity(group):
    p, results = group
    cases = _case_results(results[0])
    assert any(n % p for _, n, _, _ in cases) or p == 1, "an uneven N is covered"
    assert any(w > max(split_sizes(n, p)) for _, n, w, _ in cases), "a halo spanning several ranks is covered"
    assert any(w > n for _, n, w, _ in cases), "a halo longer than the sequence is covered"
    for rank, res in enumerate(results):
        for case, r in _case_results(res).items():
            assert r["forward_exact"], f"sp={p} rank {rank} {case}: forward differs from direct indexing"
            assert r["grad_err"] <= 1e-12, f"sp={p} rank {rank} {case}: gradient error {r['grad_err']:.3e}"


@pytest.mark.timeout(200)
def test_halo_ledger_matches_theory(group):
    p, results = group
    for case in _case_results(results[0]):
        mode, n, w, feat = case
        expected = halo_bytes(mode, split_sizes(n, p), w, row_numel=int(torch.Size(feat).numel()),
                              itemsize=8, batch=BATCH)
        for op in ("halo", "halo.backward"):
            measured = summed_over_ranks([res[case]["ledger"] for res in results]).get(op, 0)
            assert measured == expected, f"sp={p} {case} {op}: ledger {measured} B, closed form {expected} B"
        assert all(res[case]["calls"] == (1 if p > 1 else 0) for res in results), f"sp={p} {case}: calls"
        if p == 1:
            assert all(not res[case]["ledger"] for res in results), "sp=1 records nothing"


@pytest.mark.timeout(200)
def test_halo_errors(group):
    _, results = group
    for rank, res in enumerate(results):
        assert res["bad_block"] is not None and f"SP rank {rank}" in res["bad_block"], res["bad_block"]
        assert res["bad_mode"] is not None and "mode" in res["bad_mode"], res["bad_mode"]
        assert res["bad_w"] is not None and "positive integer" in res["bad_w"], res["bad_w"]


def test_halo_bytes_independent_of_n():
    """w <= every block: 2w rows per rank (circular), w per rank but the first (causal), whatever N."""
    for n in (64, 65, 1000):
        assert halo_bytes("circular", split_sizes(n, 4), 3, row_numel=5, itemsize=4) == 4 * 2 * 3 * 5 * 4
        assert halo_bytes("causal", split_sizes(n, 4), 3, row_numel=5, itemsize=4) == 3 * 3 * 5 * 4
    assert halo_bytes("circular", [7], 100, row_numel=1, itemsize=8) == 0
