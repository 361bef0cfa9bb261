"""Item 4: how close the convolutions come to the FFTs they cannot avoid.

``cross_conv`` on C vector channels needs 3C + 3C forward real FFTs and 3C inverse ones; ``circular_conv``
on D scalar channels needs D + D forward and D inverse. The "bare" time is exactly those torch.fft calls
on tensors of the same sizes and layout (one rfft of q, one of k, one irfft of a spectrum), with nothing
else: the practical limit on this machine. Efficiency = bare time / convolution time
(median of per-repeat ratios). Throughput counts
2.5 N log2 N flops per real FFT of length N (half the usual 5 N log2 N of a complex one). Timings are
medians of interleaved repeats, in one process, after a warm-up.

``cross_conv_before`` is the original formulation of ``cross_conv``, kept here for the side-by-side (make it
fast): a stack of six complex products per frequency, then a slice and a 1/N pass after the inverse. The
current ``cross_conv`` writes the cross product into one buffer (multiply, fused multiply-subtract in place)
and folds 1/N into the forward FFT (``norm="forward"``). Both are timed against the same bare FFTs.

    python benchmarks/fft_efficiency.py            # writes results/fft_efficiency.{json,png}
    python benchmarks/fft_efficiency.py --quick    # smoke run (small N, results in a temp dir)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import markdown_table  # noqa: E402


def cross_conv_before(q, k, mode: str = "circular"):
    """The original ``cross_conv`` (the "before"): unbind, six complex products, stack; slice and scale."""
    import torch

    from dist_hyena.ops import conv_length

    n = q.shape[1]
    length = conv_length(n, mode)
    a1, a2, a3 = torch.fft.rfft(q, n=length, dim=1).unbind(-1)
    b1, b2, b3 = torch.fft.rfft(k, n=length, dim=1).unbind(-1)
    spec = torch.stack([a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1], dim=-1)
    return torch.fft.irfft(spec, n=length, dim=1)[:, :n] / n


def cases(n: int, cv: int, d: int, mode: str):
    import torch

    from dist_hyena.ops import circular_conv, conv_length, cross_conv

    length = conv_length(n, mode)
    qv, kv = torch.randn(2, 1, n, cv, 3).unbind(0)
    qs, ks = torch.randn(2, 1, n, d).unbind(0)
    spec_v = torch.fft.rfft(qv, n=length, dim=1)
    spec_s = torch.fft.rfft(qs, n=length, dim=1)

    def bare_vector():
        torch.fft.rfft(qv, n=length, dim=1), torch.fft.rfft(kv, n=length, dim=1)
        torch.fft.irfft(spec_v, n=length, dim=1)

    def bare_scalar():
        torch.fft.rfft(qs, n=length, dim=1), torch.fft.rfft(ks, n=length, dim=1)
        torch.fft.irfft(spec_s, n=length, dim=1)

    # real FFTs of length `length` per call
    ffts = {"cross_conv": 9 * cv, "cross_conv_before": 9 * cv, "circular_conv": 3 * d}
    return length, ffts, {
        "cross_conv": (lambda: cross_conv(qv, kv, mode), bare_vector),
        "cross_conv_before": (lambda: cross_conv_before(qv, kv, mode), bare_vector),
        "circular_conv": (lambda: circular_conv(qs, ks, mode), bare_scalar),
    }


def forward_backward(n: int, cv: int, mode: str, repeats: int) -> dict:
    """cross_conv before vs after in training: forward + backward (sum of the output), interleaved repeats."""
    import torch

    from dist_hyena.ops import cross_conv

    q, k = (torch.randn(1, n, cv, 3, requires_grad=True) for _ in range(2))
    impl = {"after": cross_conv, "before": cross_conv_before}
    times = {key: [] for key in impl}
    for i in range(repeats + 1):  # the first round is the warm-up
        for key, fn in impl.items():
            t0 = time.perf_counter()
            fn(q, k, mode).sum().backward()
            if i:
                times[key].append(time.perf_counter() - t0)
            q.grad = k.grad = None
    return {"forward_backward_s": harness.median(times["after"]),
            "before_forward_backward_s": harness.median(times["before"]),
            "speedup_forward_backward_vs_before": paired(times["before"], times["after"])}


def paired(num: list[float], den: list[float]) -> float:
    """Median of per-repeat ratios num_i / den_i."""
    return harness.median([a / b for a, b in zip(num, den, strict=True)])


def run(sizes: list[int], cv: int, d: int, modes: list[str], repeats: int) -> list[dict]:
    import torch

    rows = []
    for mode in modes:
        for n in sizes:
            length, ffts, fns = cases(n, cv, d, mode)
            times = {(name, key): [] for name in fns for key in ("conv", "bare")}
            with torch.no_grad():
                for conv, bare in fns.values():
                    conv(), bare()
                got, ref = fns["cross_conv"][0](), fns["cross_conv_before"][0]()
                rel_diff = ((got - ref).abs().max() / ref.abs().max()).item()
                for _ in range(repeats):  # interleaved, so every op and its bare FFTs see the same machine load
                    for name, (conv, bare) in fns.items():
                        for key, fn in (("conv", conv), ("bare", bare)):
                            t0 = time.perf_counter()
                            fn()
                            times[name, key].append(time.perf_counter() - t0)
            for name in fns:
                conv_s, bare_s = harness.median(times[name, "conv"]), harness.median(times[name, "bare"])
                flops = ffts[name] * 2.5 * length * math.log2(length)
                # ratios of times measured side by side (same repeat), then the median: steadier under load
                # than a ratio of medians
                rows.append({"op": name, "mode": mode, "n": n, "fft_length": length, "channels": d if
                             name == "circular_conv" else cv, "conv_s": conv_s, "bare_fft_s": bare_s,
                             "efficiency": paired(times[name, "bare"], times[name, "conv"]),
                             "conv_gflops": flops / conv_s / 1e9, "bare_gflops": flops / bare_s / 1e9})
                print(rows[-1], file=sys.stderr)
            after = next(r for r in rows[-3:] if r["op"] == "cross_conv")
            after["speedup_vs_before"] = paired(times["cross_conv_before", "conv"], times["cross_conv", "conv"])
            after["max_rel_diff_vs_before"] = rel_diff
            after.update(forward_backward(n, cv, mode, max(2, repeats // 2)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, results to a temp dir")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2**12, 2**14, 2**16, 2**18, 2**20])
    ap.add_argument("--vector-channels", type=int, default=1, help="Cv (n-body model: 1)")
    ap.add_argument("--scalar-channels", type=int, default=8, help="D (n-body model: 8)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see benchmarks/README.md)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = ap.parse_args()
    harness.set_threads(args.threads)
    modes = ["circular", "causal"]
    if args.quick:
        args.sizes, args.repeats, modes = [256], 2, ["circular"]
    args.out = harness.results_dir(args)
    rows = run(args.sizes, args.vector_channels, args.scalar_channels, modes, args.repeats)
    payload = {"benchmark": "fft_efficiency", "machine": harness.machine(), "rows": rows}
    harness.save("fft_efficiency", payload, args.out, required=("rows",), config=harness.settings(args))
    plot(payload, args.out / "fft_efficiency.png")


def runs_table(payload: dict) -> str:
    """Every measured op: its time, the bare FFTs' time, the efficiency and the rate."""
    rows = [[r["op"], r["mode"], r["n"], r["fft_length"], f"{r['conv_s'] * 1e3:.2f}", f"{r['bare_fft_s'] * 1e3:.2f}",
             f"{r['efficiency']:.2f}", f"{r['conv_gflops']:.2f}"] for r in payload["runs"]]
    return markdown_table(["op", "mode", "N", "FFT length", "conv (ms)", "bare FFTs (ms)", "efficiency",
                           "conv GFLOP/s"], rows)


def before_after_table(payload: dict) -> str:
    """``cross_conv`` against ``cross_conv_before`` at every size: forward, efficiency and forward + backward."""
    rows, before = [], {(r["mode"], r["n"]): r for r in payload["runs"] if r["op"] == "cross_conv_before"}
    for r in (r for r in payload["runs"] if r["op"] == "cross_conv"):
        b = before[r["mode"], r["n"]]
        rows.append([r["mode"], r["n"], f"{b['conv_s'] * 1e3:.2f}", f"{r['conv_s'] * 1e3:.2f}",
                     f"{r['bare_fft_s'] * 1e3:.2f}", f"{b['efficiency']:.2f} → {r['efficiency']:.2f}",
                     f"{r['speedup_vs_before']:.2f}×",
                     f"{r['before_forward_backward_s'] * 1e3:.1f} / {r['forward_backward_s'] * 1e3:.1f}",
                     f"{r['speedup_forward_backward_vs_before']:.2f}×"])
    return markdown_table(["mode", "N", "before (ms)", "after (ms)", "bare FFTs (ms)", "efficiency before → after",
                           "forward speed-up", "fwd+bwd before / after (ms)", "fwd+bwd speed-up"], rows)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"cross_conv": "tab:blue", "cross_conv_before": "tab:gray", "circular_conv": "tab:green"}
    styles = {"circular": "o-", "causal": "s--"}
    rows = payload["rows"]
    for op, color in colors.items():
        for mode, style in styles.items():
            pts = [r for r in rows if r["op"] == op and r["mode"] == mode]
            if pts:
                ax.plot([r["n"] for r in pts], [r["efficiency"] for r in pts], style, color=color,
                        label=f"{op} ({mode})")
    ax.axhline(1.0, color="grey", ls=":", label="bare torch.fft")
    ax.set(xscale="log", ylim=(0, 1.2), xlabel="tokens N", ylabel="bare FFT time / convolution time",
           title="FFT efficiency of the convolutions")
    ax.legend(fontsize=7)
    for mode, style in styles.items():
        pts = [r for r in rows if r["op"] == "cross_conv" and r["mode"] == mode]
        if pts:
            ax2.plot([r["n"] for r in pts], [r["speedup_vs_before"] for r in pts], style, color="tab:blue",
                     label=f"forward ({mode})")
            ax2.plot([r["n"] for r in pts], [r["speedup_forward_backward_vs_before"] for r in pts], style,
                     color="tab:red", label=f"forward + backward ({mode})")
    ax2.axhline(1.0, color="grey", ls=":")
    ax2.set(xscale="log", ylim=(0, None), xlabel="tokens N", ylabel="before time / after time",
            title="cross_conv: speed-up over the previous formulation")
    ax2.legend(fontsize=7)
    harness.save_figure(fig, path)


if __name__ == "__main__":
    main()
