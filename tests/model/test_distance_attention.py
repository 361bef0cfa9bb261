"""The SDPA distance-attention baseline: equals its explicit N x N definition and is rotation-equivariant."""

import math

import pytest
import torch

from dist_hyena.attention import DistanceAttention
from tests.helpers.equivariance import assert_equivariant, relative_error


def explicit(q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, causal):
    dist2 = (q_eqv[:, :, None] - k_eqv[:, None, :]).pow(2).sum((-1, -2))  # [B, N, N]
    logits = (torch.einsum("bid,bjd->bij", q_inv, k_inv) - dist2) / math.sqrt(q_inv.shape[-1] + 3 * q_eqv.shape[2])
    if causal:
        n = logits.shape[1]
        logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    w = torch.softmax(logits, dim=-1)
    return torch.einsum("bij,bjcx->bicx", w, v_eqv), torch.einsum("bij,bjd->bid", w, v_inv)


@pytest.mark.parametrize("mode", ["circular", "causal"])
def test_distance_attention_matches_definition_and_rotates(mode):
    torch.manual_seed(0)
    vec = [torch.randn(2, 33, 2, 3, dtype=torch.float64) for _ in range(3)]
    sca = [torch.randn(2, 33, 5, dtype=torch.float64) for _ in range(3)]
    attn = DistanceAttention(mode)
    u_eqv, u_inv = attn(*vec, *sca)
    e_eqv, e_inv = explicit(*vec, *sca, causal=mode == "causal")
    assert relative_error(u_eqv, e_eqv) < 1e-12 and relative_error(u_inv, e_inv) < 1e-12

    def packed(x, f):  # q, k, v of both streams as one (vectors, scalars) pair, as the helper moves them
        return attn(*x.split(2, dim=2), *f.split(5, dim=2))

    assert_equivariant(packed, torch.cat(vec, dim=2), torch.cat(sca, dim=2), (), tol=1e-12, outputs="vectors")


def test_distance_attention_rejects_unknown_mode():
    with pytest.raises(ValueError, match="attention mode"):
        DistanceAttention("sliding")
