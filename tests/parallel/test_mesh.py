"""The (dp, sp) mesh on real gloo ranks: group layout, argument checks, SP ops on a dp x sp mesh."""

import pytest
import torch
import torch.distributed as dist

from dist_hyena.ops import cross_conv
from dist_hyena.parallel import SequenceParallelConv, init_mesh, shard_sequence, sp_all_reduce, split_sizes
from tests.helpers.distributed import run_ranks


def _error(fn):
    try:
        fn()
    except (ValueError, RuntimeError) as e:
        return str(e)
    return None


def _mesh_checks(rank, world):
    mesh = init_mesh(sp=2)
    out = {"coords": (mesh.world, mesh.dp, mesh.sp, mesh.rank, mesh.dp_rank, mesh.sp_rank)}
    me = torch.tensor([float(rank)])
    out["sp_sum"] = sp_all_reduce(me, mesh).item()
    dp_sum = me.clone()
    dist.all_reduce(dp_sum, group=mesh.dp_group)
    out["dp_sum"] = dp_sum.item()
    # Each DP replica convolves its own sample over its SP pair: ranks in group order, not global order.
    gen = torch.Generator().manual_seed(100 + mesh.dp_rank)
    q, k = (torch.randn(1, 9, 2, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    conv = SequenceParallelConv(mesh, 2, 0, "causal", "channels")
    u, _ = conv(shard_sequence(q, mesh), shard_sequence(k, mesh), None, q.new_zeros(1, 5 - mesh.sp_rank, 0),
                q.new_zeros(1, 5 - mesh.sp_rank, 0), None)
    out["conv_err"] = (u - shard_sequence(cross_conv(q, k, "causal"), mesh)).abs().max().item()
    out["errors"] = {
        "sp3": _error(lambda: init_mesh(sp=3)),
        "sp0": _error(lambda: init_mesh(sp=0)),
        "dp_mismatch": _error(lambda: init_mesh(sp=2, dp=3)),
        "too_short": _error(lambda: shard_sequence(torch.zeros(1, 1, 3), mesh)),
    }
    return out


@pytest.mark.timeout(120)
def test_dp_by_sp_mesh():
    results = run_ranks(_mesh_checks, world=4, timeout=90)
    for rank, res in enumerate(results):
        assert res["coords"] == (4, 2, 2, rank, rank // 2, rank % 2)
        # SP groups are consecutive ranks {0, 1}, {2, 3}; DP groups stride: {0, 2}, {1, 3}.
        assert res["sp_sum"] == {0: 1, 1: 1, 2: 5, 3: 5}[rank]
        assert res["dp_sum"] == {0: 2, 1: 4, 2: 2, 3: 4}[rank]
        assert res["conv_err"] < 1e-12
        errors = res["errors"]
        assert "world size 4 is not divisible by sp=3" in errors["sp3"]
        assert "sp must be a positive integer" in errors["sp0"]
        assert "3 x 2 = 6 does not match world size 4" in errors["dp_mismatch"]
        assert "1 tokens cannot be split over sp=2" in errors["too_short"]


def test_init_mesh_needs_distributed():
    with pytest.raises(RuntimeError, match="init_process_group"):
        init_mesh(sp=1)


def test_split_sizes_follows_tensor_split():
    for total in range(0, 12):
        for parts in range(1, 5):
            expected = [len(c) for c in torch.arange(total).tensor_split(parts)]
            assert split_sizes(total, parts) == expected
