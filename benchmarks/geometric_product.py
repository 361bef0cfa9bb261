"""Make it fast: the GeometricProduct layer before and after the fused product (same parameters, same input).

"before" is the original formulation, kept here as the reference: gather the normalised right operand into
``[..., o, 8 (k), 8 (i)]`` by the sparse Cayley table, multiply by the left operand and the weights, sum.
"after" is ``GeometricProduct.forward``: one einsum against a dense per-channel weighted Cayley tensor and a
custom backward that keeps only the two operands. Reports forward and forward + backward time (medians of
interleaved repeats in one process) and the bytes autograd keeps for backward (counted exactly with
``saved_tensors_hooks``, so it does not depend on the machine's load).

    python benchmarks/geometric_product.py            # writes results/geometric_product.json
    python benchmarks/geometric_product.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402


def gather_forward(layer, x):
    """The original GeometricProduct.forward (the "before")."""
    a = layer.left(x)
    b = layer._normalise(layer.right(x))[..., layer.right_blade]
    coef = layer.sign.to(x.dtype) * layer.path_weight[:, layer.path]
    return (layer.skip(x) + (a.unsqueeze(-2) * b * coef).sum(-1)) / math.sqrt(2)


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn()``'s graph is alive."""
    import torch

    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def run(tokens: int, widths: list[tuple[int, int]], repeats: int) -> list[dict]:
    import torch

    from dist_hyena.nn import GeometricProduct

    rows = []
    for c_in, c_out in widths:
        torch.manual_seed(0)
        layer = GeometricProduct(c_in, c_out)
        x = torch.randn(1, tokens, c_in, 8, requires_grad=True)
        impl = {"before": lambda l=layer, x=x: gather_forward(l, x), "after": lambda l=layer, x=x: l(x)}
        with torch.no_grad():
            max_diff = (impl["before"]() - impl["after"]()).abs().max().item()
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
        for p in ("forward_s", "forward_backward_s", "saved_bytes_per_token"):
            row[f"speedup_{p}" if p.endswith("_s") else "saved_bytes_ratio"] = row[f"before_{p}"] / row[f"after_{p}"]
        rows.append(row)
        print(row, file=sys.stderr)
    return rows


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
    args.out = args.out or (Path(tempfile.mkdtemp(prefix="bench-")) if args.quick else harness.RESULTS)
    payload = {"benchmark": "geometric_product", "machine": harness.machine(),
               "rows": run(args.tokens, widths, args.repeats)}
    harness.save("geometric_product", payload, args.out)


if __name__ == "__main__":
    main()
