"""Item 2: the longest sequence for one full training step (forward + backward + Adam) of the n-body model
at sp = 1, with and without activation checkpointing, and the peak memory per token.

Every N runs in a fresh process capped at ``--cap-gib`` (default: what the machine has free now, minus a
margin), so "does not fit" means the allocator refused, not that the machine died. Peak memory is the
process's high-water RSS minus its RSS before the inputs were made (model and optimizer state excluded:
they do not grow with N). N doubles until a step does not fit or ``--max-tokens`` is reached.

    python benchmarks/longest_context.py            # full run, writes results/longest_context.{json,png}
    python benchmarks/longest_context.py --quick    # smoke run (small N, results in a temp dir)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

PAPER_FORWARD_TOKENS = 3_500_000  # one layer, forward only, 24 GB A10G (DESIGN §2)
# name -> (activation checkpointing per block, token-chunked recompute in every Clifford MLP)
VARIANTS = {"checkpointing+mlp_chunks": (True, True), "checkpointing": (True, False), "plain": (False, False)}


def measure(point: dict) -> dict:
    import torch

    from dist_hyena import HyenaConfig, SE3HyenaModel

    harness.cap_memory(point["cap_bytes"])
    torch.manual_seed(0)
    model = SE3HyenaModel(HyenaConfig(activation_checkpointing=point["checkpointing"],
                                      mlp_token_chunk=point["token_chunk"]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    n = point["n"]
    base = harness.rss_bytes()
    result = dict(point, fits=False)
    try:
        x, f, target = torch.randn(1, n, 2, 3), torch.randn(1, n, 1), torch.randn(1, n, 1, 3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = (model(x, f)[0] - target).square().mean()
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        step()
        result.update(fits=True, step_s=time.perf_counter() - t0)
    except (RuntimeError, MemoryError) as err:
        if not harness.is_out_of_memory(err):
            raise
        result["error"] = "out of memory"
    peak = harness.peak_rss_bytes() - base
    result.update(peak_bytes=peak, bytes_per_token=peak / n)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_point_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="smoke run: two small N, results to a temp dir")
    ap.add_argument("--start", type=int, default=2**16, help="first N (doubles from there)")
    ap.add_argument("--max-tokens", type=int, default=2**23)
    ap.add_argument("--cap-gib", type=float, default=None, help="memory cap per run (default: free now - 1.5)")
    ap.add_argument("--token-chunk", type=int, default=16384, help="tokens per MLP recompute chunk")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per point")
    args = ap.parse_args()
    if harness.serve_point(args, measure):
        return
    if args.quick:
        args.start, args.max_tokens, args.cap_gib = 512, 512, args.cap_gib or 2.0
    args.out = args.out or (Path(tempfile.mkdtemp(prefix="bench-")) if args.quick else harness.RESULTS)
    cap = int((args.cap_gib * harness.GIB) if args.cap_gib else min(20 * harness.GIB,
                                                                     harness.available_bytes() - 1.5 * harness.GIB))
    runs: list[dict] = []
    for variant, (ckpt, chunk) in VARIANTS.items():
        n = args.start
        while n <= args.max_tokens:
            point = {"variant": variant, "n": n, "checkpointing": ckpt, "cap_bytes": cap, "threads": args.threads,
                     "token_chunk": args.token_chunk if chunk else None}
            r = harness.run_point(__file__, point, args.timeout)
            runs.append(r)
            report(runs, cap, args.out)  # after every point: a long run stopped early still leaves its results
            if not r["fits"]:
                break
            n *= 2


def report(runs: list[dict], cap: int, out: Path) -> None:
    summary = {}
    for variant in VARIANTS:
        ok = [r for r in runs if r["variant"] == variant and r["fits"]]
        best = max(ok, key=lambda r: r["n"]) if ok else None
        summary[variant] = {
            "largest_n": best["n"] if best else 0,
            "bytes_per_token": best["bytes_per_token"] if best else None,
            "step_s": best["step_s"] if best else None,
            "estimated_max_n": int(cap / best["bytes_per_token"]) if best else 0,
        }
    payload = {"benchmark": "longest_context", "model": "n-body (paper widths, 2 blocks)", "sp": 1,
               "cap_gib": round(cap / harness.GIB, 2), "paper_forward_tokens": PAPER_FORWARD_TOKENS,
               "machine": harness.machine(), "runs": runs, "summary": summary}
    harness.save("longest_context", payload, out)
    plot(payload, out / "longest_context.png")


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, style in zip(VARIANTS, ("o-", "s-", "^-"), strict=True):
        pts = [r for r in payload["runs"] if r["variant"] == variant and r["fits"]]
        ax.plot([r["n"] for r in pts], [r["peak_bytes"] / harness.GIB for r in pts], style, label=variant)
    ax.axhline(payload["cap_gib"], color="grey", ls="--", label=f"cap {payload['cap_gib']} GiB")
    ax.set(xscale="log", xlabel="tokens N", ylabel="peak memory of a training step (GiB)",
           title="n-body model, full training step, sp = 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
