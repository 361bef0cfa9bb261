"""Make it fast: the GeometricProduct layer before and after the fused product (same parameters, same input).

Three implementations of the same layer, the earlier two kept here as references:
``gather``, the first: gather the normalised right operand into ``[..., o, 8 (k), 8 (i)]`` by the sparse Cayley
table, multiply by the left operand and the weights, sum, plain autograd; ``sparse_fused``, the second: the
same gather inside one autograd Function over chunks of 2^17 rows that keeps only the two operands for
backward; ``after``, ``GeometricProduct.forward`` now: blade-major operands (``[8, rows, channels]``), the 64
non-zero terms as whole-matrix multiply-adds per cache-sized chunk, no transposes, and 20 path weights instead of
64. (Between the second and now, a third release contracted outer products a_i b_j with the dense weighted Cayley
tensor in batched matrix products: 8x the arithmetic; ``benchmarks/step_efficiency.py --against v0.1.0`` measures
the whole step against it.) Reports forward and forward +
backward time (medians of interleaved repeats in one process) and the bytes autograd keeps for backward
(counted exactly with ``saved_tensors_hooks``, so it does not depend on the machine's load).

    python benchmarks/geometric_product.py            # writes results/geometric_product.json
    python benchmarks/geometric_product.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import markdown_table  # noqa: E402


def _sparse_tables():
    """The Cayley table in sparse form: for output blade k and left blade i, the one right blade j with
    blade_i blade_j = ±blade_k (``right[k, i]``), and the left partner of (k, j) (``left[k, j]``)."""
    from dist_hyena.nn import algebra

    table = algebra.cayley_table(torch.float64)
    right = table.abs().argmax(dim=1).T.contiguous()  # [k, i] -> j
    left = table.abs().argmax(dim=0).T.contiguous()  # [k, j] -> i
    return right, left


def _operands(layer, x):
    """The layer's operands and term weights in the earlier releases' channel-major layout ([..., o, 8])."""
    a, b = (t.movedim(0, -1) for t in (layer.left(x), layer._normalise(layer.right(x))))
    right, left = _sparse_tables()
    from dist_hyena.nn import fused

    coef = fused.coefficients(layer.path_weight).permute(2, 0, 1)  # [o, k, i]
    return a, b, coef, right, left


def gather_forward(layer, x):
    """The first GeometricProduct.forward: gather the right operand into [..., o, 8 (k), 8 (i)], plain autograd."""
    a, b, coef, right, _ = _operands(layer, x)
    return (layer.skip(x).movedim(0, -1) + (a.unsqueeze(-2) * b[..., right] * coef).sum(-1)) / math.sqrt(2)


def sparse_fused_forward(layer, x):
    """The second: the same gather in one autograd Function over chunks of 2^17 rows, keeping only a and b."""
    return (layer.skip(x).movedim(0, -1) + _SparseProduct.apply(*_operands(layer, x))) / math.sqrt(2)


class _SparseProduct(torch.autograd.Function):
    """y[..., o, k] = sum_i a[..., o, i] b[..., o, right[k, i]] coef[o, k, i] (the second implementation)."""

    rows = 2**17

    @staticmethod
    def forward(ctx, a, b, coef, right, left):
        ctx.save_for_backward(a, b, coef, right, left)
        o = coef.shape[0]
        a2, b2 = a.reshape(-1, o, 8), b.reshape(-1, o, 8)
        out = torch.empty_like(a2)
        step = max(1, _SparseProduct.rows // o)
        for s in range(0, a2.shape[0], step):
            sl = slice(s, s + step)
            torch.sum(a2[sl].unsqueeze(-2) * b2[sl][..., right] * coef, dim=-1, out=out[sl])
        return out.view_as(a)

    @staticmethod
    def backward(ctx, grad):
        a, b, coef, right, left = ctx.saved_tensors
        o = coef.shape[0]
        a2, b2, g2 = a.reshape(-1, o, 8), b.reshape(-1, o, 8), grad.reshape(-1, o, 8)
        coef_by_right = coef.gather(2, left.expand(o, 8, 8))  # [o, k, j]: coef at the left partner of (k, j)
        grad_a, grad_b, grad_coef = torch.empty_like(a2), torch.empty_like(b2), torch.zeros_like(coef)
        step = max(1, _SparseProduct.rows // o)
        for s in range(0, a2.shape[0], step):
            sl = slice(s, s + step)
            gk, b_right = g2[sl].unsqueeze(-1), b2[sl][..., right]
            grad_a[sl] = (gk * b_right * coef).sum(-2)
            grad_coef += torch.einsum("tok,toki->oki", g2[sl], a2[sl].unsqueeze(-2) * b_right)
            grad_b[sl] = (gk * a2[sl][..., left] * coef_by_right).sum(-2)
        return grad_a.view_as(a), grad_b.view_as(b), grad_coef, None, None


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn()``'s graph is alive."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def run(tokens: int, widths: list[tuple[int, int]], repeats: int) -> list[dict]:
    from dist_hyena.nn import GeometricProduct

    rows = []
    for c_in, c_out in widths:
        torch.manual_seed(0)
        layer = GeometricProduct(c_in, c_out)
        x = torch.randn(8, 1, tokens, c_in, requires_grad=True)  # blade-major, as the layers take it
        impl = {"gather": lambda l=layer, x=x: gather_forward(l, x),
                "sparse_fused": lambda l=layer, x=x: sparse_fused_forward(l, x),
                "after": lambda l=layer, x=x: l(x).movedim(0, -1)}
        with torch.no_grad():
            max_diff = max((impl[k]() - impl["after"]()).abs().max().item() for k in ("gather", "sparse_fused"))
        times = {f"{k}_{p}": [] for k in impl for p in ("forward_s", "forward_backward_s")}
        for _ in range(repeats + 1):  # first round is the warm-up
            for key, fn in impl.items():
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn()
                t1 = time.perf_counter()
                fn().square().sum().backward()
                t2 = time.perf_counter()
                times[f"{key}_forward_s"].append(t1 - t0)
                times[f"{key}_forward_backward_s"].append(t2 - t1)
        row = {"tokens": tokens, "in_channels": c_in, "out_channels": c_out, "max_abs_diff": max_diff}
        row.update({k: harness.median(v[1:]) for k, v in times.items()})
        for key, fn in impl.items():
            row[f"{key}_saved_bytes_per_token"] = saved_bytes(fn) / tokens
        for before in ("gather", "sparse_fused"):
            for p in ("forward_s", "forward_backward_s"):
                row[f"speedup_{p}_vs_{before}"] = row[f"{before}_{p}"] / row[f"after_{p}"]
            row[f"saved_bytes_ratio_vs_{before}"] = (row[f"{before}_saved_bytes_per_token"]
                                                     / row["after_saved_bytes_per_token"])
        rows.append(row)
        print(row, file=sys.stderr)
    return rows


IMPLEMENTATIONS = ("gather", "sparse_fused", "after")


def rows_table(payload: dict) -> str:
    """The three implementations side by side: forward, forward + backward, bytes kept for backward."""
    def each(r: dict, key: str, fmt: str) -> str:
        return " / ".join(format(r[f"{impl}_{key}"], fmt) for impl in IMPLEMENTATIONS)

    rows = [[f"{r['in_channels']}→{r['out_channels']}", r["tokens"], each(r, "forward_s", ".3g"),
             each(r, "forward_backward_s", ".3g"), f"{r['speedup_forward_s_vs_sparse_fused']:.1f}×, "
             f"{r['speedup_forward_backward_s_vs_sparse_fused']:.1f}×", each(r, "saved_bytes_per_token", ".0f")]
            for r in payload["rows"]]
    return markdown_table(["channels in→out", "tokens", "fwd: gather / sparse fused / now (s)",
                           "fwd+bwd: gather / sparse fused / now (s)", "speed-up vs sparse fused (fwd, fwd+bwd)",
                           "kept for backward (B/token): gather / sparse fused / now"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few tokens, results to a temp dir")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see benchmarks/README.md)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = ap.parse_args()
    harness.set_threads(args.threads)
    widths = [(9, 16), (17, 128)]  # n-body operator input -> hidden; recall operator input -> hidden
    if args.quick:
        args.tokens, args.repeats, widths = 64, 1, [(3, 4)]
    args.out = harness.results_dir(args)
    payload = {"benchmark": "geometric_product", "machine": harness.machine(),
               "rows": run(args.tokens, widths, args.repeats)}
    harness.save("geometric_product", payload, args.out, required=("rows",), config=harness.settings(args))


if __name__ == "__main__":
    main()
