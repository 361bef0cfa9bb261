"""Item 1: one SE(3)-Hyena operator against the paper's vector attention and the SDPA distance attention.

One layer (a ``HyenaOperator``: projections, global mixer, gates, output MLP) at the paper's recall widths
(invariant 16, equivariant 128, gating 8, one vector channel), float32, batch 1. For each mixer and N, a fresh
process (capped at ``--cap-gib``) times the forward (no grad) and the forward + backward, medians of up to
3 repeats, and records the peak RSS above the process's RSS once the inputs exist. A mixer stops at the first
N that does not fit or runs past ``--timeout``.

    python benchmarks/operator_vs_attention.py            # writes results/operator_vs_attention.{json,png}
    python benchmarks/operator_vs_attention.py --quick    # smoke run (small N, results in a temp dir)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import grouped, markdown_table, mib  # noqa: E402

MIXERS = ("hyena", "attention", "sdpa")
PAPER = {"tokens": 20_000, "speedup": 3.5, "memory_ratio": 18.0}  # A10G, forward, one layer (docs/design.md §2)
WIDTHS = dict(head="recall", vector_width=1, scalar_width=16, hidden_width=128, gate_width=8, vector_in=1,
              scalar_in=16)


def build(mixer: str, widths: dict):
    from dist_hyena import HyenaConfig
    from dist_hyena.model import HyenaOperator

    cfg = HyenaConfig(**widths, mixer=mixer)
    return HyenaOperator(cfg), cfg


def measure(point: dict) -> dict:
    import torch

    harness.cap_memory(point["cap_bytes"])
    torch.manual_seed(0)
    op, cfg = build(point["mixer"], point["widths"])
    n = point["n"]
    x = torch.randn(1, n, cfg.vector_width, 3)
    f = torch.randn(1, n, cfg.scalar_width)
    base = harness.rss_bytes()
    result = dict(point, fits=False)
    result.pop("cap_bytes")
    result.pop("widths")

    def forward():
        with torch.no_grad():
            op(x, f)

    def forward_backward():
        op.zero_grad(set_to_none=True)
        dx, df = op(x, f)
        (dx.square().sum() + df.square().sum()).backward()

    try:
        result["forward_s"] = harness.median(harness.timed(forward, budget_s=point["budget_s"]))
        result["forward_peak_bytes"] = harness.peak_rss_bytes() - base
        result["fits"] = True
        result["forward_backward_s"] = harness.median(harness.timed(forward_backward, budget_s=point["budget_s"]))
        result["forward_backward_peak_bytes"] = harness.peak_rss_bytes() - base
    except (RuntimeError, MemoryError) as err:
        if not harness.is_out_of_memory(err):
            raise
        result["error"] = "out of memory"
    return result


def ratios_at(runs: list[dict], n: int) -> dict:
    """attention / hyena and sdpa / hyena at ``n``: how many times slower and hungrier the baselines are."""
    at = {r["mixer"]: r for r in runs if r["n"] == n and r["fits"]}
    out = {"n": n}
    if "hyena" not in at:
        return out
    for other in ("attention", "sdpa"):
        for key in ("forward_s", "forward_peak_bytes", "forward_backward_s", "forward_backward_peak_bytes"):
            if other in at and key in at[other] and key in at["hyena"]:
                out[f"{other}/hyena {key}"] = at[other][key] / at["hyena"][key]
        if other not in at:
            out[f"{other}"] = "does not fit or timed out"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_point_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="smoke run: small widths and N, results to a temp dir")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 20000, 65536, 262144])
    ap.add_argument("--cap-gib", type=float, default=12.0, help="memory cap per run")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per point")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds of repeats per timing")
    args = ap.parse_args()
    if harness.serve_point(args, measure):
        return
    widths = WIDTHS
    if args.quick:
        args.sizes, args.budget = [64], 0.0
        widths = dict(WIDTHS, hidden_width=8)
    args.out = harness.results_dir(args)
    cap = int(min(args.cap_gib * harness.GIB, harness.available_bytes() - 1.5 * harness.GIB))
    runs, stopped = [], set()
    for n in args.sizes:  # N-major, so the mixers at one N run close together in time (the machine is shared)
        for mixer in MIXERS:
            if mixer in stopped:
                continue
            point = {"mixer": mixer, "n": n, "cap_bytes": cap, "widths": widths, "budget_s": args.budget,
                     "threads": args.threads}
            r = harness.run_point(__file__, point, args.timeout)
            r.pop("cap_bytes", None)
            r.pop("widths", None)
            print(json.dumps(r), file=sys.stderr)
            runs.append(r)
            if not r["fits"] or "forward_backward_s" not in r:
                stopped.add(mixer)
    common = [n for n in args.sizes if all(any(r["n"] == n and r["mixer"] == m and r["fits"] for r in runs)
                                           for m in MIXERS)]
    payload = {"benchmark": "operator_vs_attention", "widths": widths, "cap_gib": round(cap / harness.GIB, 2),
               "machine": harness.machine(), "paper": PAPER, "runs": runs,
               "ratios_at_paper_n": ratios_at(runs, PAPER["tokens"]),
               "ratios_at_largest_common_n": ratios_at(runs, max(common)) if common else {}}
    harness.save("operator_vs_attention", payload, args.out, config=harness.settings(args),
                 required=("widths", "paper", "ratios_at_paper_n", "ratios_at_largest_common_n"))
    plot(payload, args.out / "operator_vs_attention.png")


def runs_table(payload: dict) -> str:
    """Every point: time and peak memory of the forward and of the forward + backward."""
    def cells(r: dict, key: str) -> list[str]:
        return [f"{r[key + '_s']:.2f}", mib(r[key + "_peak_bytes"])] if key + "_s" in r else ["does not fit"] * 2

    return markdown_table(["N", "mixer", "forward (s)", "forward peak (MiB)", "fwd+bwd (s)", "fwd+bwd peak (MiB)"],
                          [[r["n"], r["mixer"], *cells(r, "forward"), *cells(r, "forward_backward")]
                           for r in payload["runs"]])


def ratios_table(payload: dict) -> str:
    """The baselines over SE(3)-Hyena at the paper's N."""
    ratios = payload["ratios_at_paper_n"]
    at = {r["mixer"]: r for r in payload["runs"] if r["n"] == ratios["n"]}

    def ratio(other: str, key: str, bold: bool = False) -> str:
        x = ratios[f"{other}/hyena {key}"]
        return f"**{x:.2g}×**" if bold else f"{x:.2f}×"

    gib, hyena_mib = at["attention"]["forward_peak_bytes"] / harness.GIB, mib(at["hyena"]["forward_peak_bytes"])
    memory = f"{ratio('attention', 'forward_peak_bytes', True)} ({gib:.1f} GiB vs {hyena_mib} MiB)"
    if "attention/hyena forward_backward_s" in ratios:
        attention_fb = (f"{ratio('attention', 'forward_backward_s')} time, "
                        f"{ratio('attention', 'forward_backward_peak_bytes')} memory")
    else:
        attention_fb = f"attention does not fit ({at['attention'].get('error', 'timed out')})"
    return markdown_table(
        [f"at N = {grouped(ratios['n'])} (this CPU)", "vector attention / SE(3)-Hyena",
         "SDPA distance attention / SE(3)-Hyena"],
        [["forward time", ratio("attention", "forward_s", True), ratio("sdpa", "forward_s")],
         ["forward peak memory", memory, ratio("sdpa", "forward_peak_bytes")],
         ["forward + backward", attention_fb,
          f"{ratio('sdpa', 'forward_backward_s')} time, {ratio('sdpa', 'forward_backward_peak_bytes')} memory"]])


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = {"hyena": "SE(3)-Hyena", "attention": "vector attention (paper)", "sdpa": "distance attention (SDPA)"}
    for mixer in MIXERS:
        for key, style in (("forward", "-"), ("forward_backward", "--")):
            pts = [r for r in payload["runs"] if r["mixer"] == mixer and f"{key}_s" in r]
            if not pts:
                continue
            label = f"{labels[mixer]}, {key.replace('_', '+')}"
            axes[0].plot([r["n"] for r in pts], [r[f"{key}_s"] for r in pts], style, marker="o", label=label)
            axes[1].plot([r["n"] for r in pts], [r[f"{key}_peak_bytes"] / harness.GIB for r in pts], style,
                         marker="o", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="tokens N", ylabel="time (s)", title="one layer: time")
    axes[1].set(xscale="log", yscale="log", xlabel="tokens N", ylabel="peak memory (GiB)", title="one layer: memory")
    axes[1].legend(fontsize=7)
    harness.save_figure(fig, path)


if __name__ == "__main__":
    main()
