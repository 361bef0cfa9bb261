"""Item 2: the longest sequence for one full training step (forward + backward + Adam) of the n-body model,
with and without activation checkpointing and token-chunked MLPs, at sp = 1 and sp = 2, and the peak memory
per token. The ``+local4`` variants add the local geometric context (w = 4, docs/design.md §2.4): what it costs.

Every point runs in fresh processes (sp = 2: two gloo ranks under torchrun, each holding N/2 tokens), capped
at ``--cap-gib`` in all (split evenly over the ranks), so "does not fit" means the allocator refused, not that
the machine died. Peak memory is each rank's high-water RSS minus its RSS before the inputs were made (model
and optimizer state excluded: they do not grow with N), summed over the ranks. For each variant and sp the
sizes run in order until one does not fit.

    python benchmarks/longest_context.py --sizes 65536 131072 262144    # writes results/longest_context.*
    python benchmarks/longest_context.py --quick                         # smoke run (results in a temp dir)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import grouped, markdown_table, percent  # noqa: E402

PAPER_FORWARD_TOKENS = 3_500_000  # one layer, forward only, 24 GB A10G (docs/design.md §2)
# name -> (activation checkpointing per block, token-chunked MLPs, local context window; docs/design.md §2.4)
VARIANTS = {"plain": (False, False, 0), "checkpointing": (True, False, 0), "mlp_chunks": (False, True, 0),
            "checkpointing+mlp_chunks": (True, True, 0), "mlp_chunks+local4": (False, True, 4),
            "checkpointing+mlp_chunks+local4": (True, True, 4)}


def measure(point: dict) -> dict | None:
    import torch
    import torch.distributed as dist

    from dist_hyena import HyenaConfig, SE3HyenaModel

    sp, mesh = point["sp"], None
    if sp > 1:
        from dist_hyena.parallel import init_mesh
        from dist_hyena.runtime import init_distributed

        init_distributed()
        mesh = init_mesh(sp=sp)
    harness.cap_memory(point["cap_bytes"] // sp)
    torch.manual_seed(0)
    model = SE3HyenaModel(HyenaConfig(activation_checkpointing=point["checkpointing"],
                                      mlp_token_chunk=point["token_chunk"],
                                      local_window=point.get("local_window", 0)), mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    n = point["n"] // sp
    base = harness.rss_bytes()
    result = dict(point, fits=False)
    try:
        x, f, target = torch.randn(1, n, 2, 3), torch.randn(1, n, 1), torch.randn(1, n, 1, 3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = (model(x, f)[0] - target).square().mean()
            loss.backward()
            if mesh is not None:  # this rank's tokens' share of the gradient, summed over the SP group
                for p in model.parameters():
                    if p.grad is not None:  # None on every rank alike (the head's scalar bias: read by no loss)
                        dist.all_reduce(p.grad, group=mesh.sp_group)
            opt.step()

        t0 = time.perf_counter()
        step()
        result.update(fits=True, step_s=time.perf_counter() - t0)
    except (RuntimeError, MemoryError) as err:
        if not harness.is_out_of_memory(err) or sp > 1:  # a rank out of memory fails the whole sp point
            raise
        result["error"] = "out of memory"
    peak = harness.peak_rss_bytes() - base
    if sp > 1:
        per_rank = [None] * sp
        dist.all_gather_object(per_rank, (peak, result["step_s"]), group=mesh.sp_group)
        if mesh.sp_rank != 0:
            return None
        result.update(peak_bytes_per_rank=[p for p, _ in per_rank], step_s=max(s for _, s in per_rank))
        peak = sum(p for p, _ in per_rank)
    result.update(peak_bytes=peak, bytes_per_token=peak / point["n"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_point_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, results to a temp dir")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2**k for k in range(16, 24)],
                    help="N to run, in order; each (variant, sp) stops at the first that does not fit")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--sp", type=int, nargs="+", default=[1, 2], help="sequence-parallel degrees")
    ap.add_argument("--cap-gib", type=float, default=None, help="memory cap per point, all ranks together "
                    "(default: free now - 1.5, at most 20)")
    ap.add_argument("--token-chunk", type=int, default=16384, help="tokens per MLP chunk")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per point")
    ap.add_argument("--keep", action="store_true",
                    help="add to the runs already in the output JSON (a campaign in several invocations)")
    args = ap.parse_args()
    if harness.serve_point(args, measure):
        return
    if args.quick:
        # The cap limits address space (RLIMIT_AS), not resident memory: a rank of 512 tokens reserves ~1.2 GB
        # (torch, gloo, glibc arenas) and touches little of it. With 2 GiB per rank a fresh-clone CI run saw both
        # sp = 2 points abort (SIGABRT) once, and never again in 7 reruns; the likely cause, so the headroom.
        args.sizes, args.cap_gib, args.variants = [512], args.cap_gib or 16.0, ["plain", "checkpointing+mlp_chunks"]
    args.out = harness.results_dir(args)
    cap = int((args.cap_gib * harness.GIB) if args.cap_gib else min(20 * harness.GIB,
                                                                     harness.available_bytes() - 1.5 * harness.GIB))
    previous = args.out / "longest_context.json"
    runs: list[dict] = json.loads(previous.read_text())["runs"] if args.keep and previous.exists() else []
    for sp in args.sp:
        for variant in args.variants:
            ckpt, chunk, window = VARIANTS[variant]
            for n in args.sizes:
                point = {"variant": variant, "sp": sp, "n": n, "checkpointing": ckpt, "cap_bytes": cap,
                         "threads": args.threads, "token_chunk": args.token_chunk if chunk else None,
                         "local_window": window}
                r = harness.run_point(__file__, point, args.timeout, ranks=sp)
                if not r["fits"] and sp > 1 and r.get("error", "").startswith("exit 1:"):
                    # A rank group that exits 1 without a memory error (seen rarely in CI under load) is run once
                    # more; the first error stays in the record.
                    r = {**harness.run_point(__file__, point, args.timeout, ranks=sp), "first_error": r["error"]}
                runs.append(r)
                # after every point: a long run stopped early still leaves its results
                report(runs, cap, args.out, harness.settings(args))
                if not r["fits"]:
                    break


def report(runs: list[dict], cap: int, out: Path, config: dict) -> None:
    summary = {}
    for key in dict.fromkeys((r["variant"], r["sp"]) for r in runs):
        ok = sorted((r for r in runs if (r["variant"], r["sp"]) == key and r["fits"]), key=lambda r: r["n"])
        failed = [r["n"] for r in runs if (r["variant"], r["sp"]) == key and not r["fits"]]
        best = ok[-1] if ok else None
        # The cost of one more token: the slope between the two largest fitting N (fixed costs cancel).
        marginal = ((ok[-1]["peak_bytes"] - ok[-2]["peak_bytes"]) / (ok[-1]["n"] - ok[-2]["n"])
                    if len(ok) > 1 else None)
        summary[f"{key[0]} sp={key[1]}"] = {
            "variant": key[0], "sp": key[1],
            "largest_n": best["n"] if best else 0,
            "smallest_n_not_fitting": min(failed) if failed else None,
            "bytes_per_token": best["bytes_per_token"] if best else None,
            "marginal_bytes_per_token": marginal,
            "step_s": best["step_s"] if best else None,
        }
    payload = {"benchmark": "longest_context", "model": "n-body (paper widths, 2 blocks)",
               "cap_gib": round(cap / harness.GIB, 2), "paper_forward_tokens": PAPER_FORWARD_TOKENS,
               "machine": harness.machine(), "runs": runs, "summary": summary}
    harness.save("longest_context", payload, out, required=("cap_gib", "paper_forward_tokens", "summary"),
                 config=config)
    plot(payload, out / "longest_context.png")


def runs_table(payload: dict) -> str:
    """Every fitting point by variant, sp and N, with the slope of the peak between consecutive sizes."""
    rows, ok = [], sorted((r for r in payload["runs"] if r["fits"]),
                          key=lambda r: (list(VARIANTS).index(r["variant"]), r["sp"], r["n"]))
    for prev, r in zip([None, *ok], ok, strict=False):
        same = prev is not None and (prev["variant"], prev["sp"]) == (r["variant"], r["sp"])
        marginal = grouped((r["peak_bytes"] - prev["peak_bytes"]) / (r["n"] - prev["n"]), ",") if same else ""
        rows.append([r["variant"], r["sp"], grouped(r["n"], ","), f"{r['step_s']:.0f}",
                     grouped(r["peak_bytes"] / 2**20, ","), grouped(r["bytes_per_token"], ","), marginal])
    return markdown_table(["variant", "sp", "N", "step (s)", "peak, all ranks (MiB)", "bytes/token",
                           "marginal bytes/token"], rows)


def _point(payload: dict, variant: str, n: int) -> dict:
    return next(r for r in payload["runs"] if (r["variant"], r["n"]) == (variant, n) and r["fits"])


def local_cost_table(mmap: dict, chunked: dict, before_1m: dict, now_1m: dict, now_1m_sp2: dict) -> str:
    """Without and with the local context (w = 4), before and after the chunked recompute; step times only of
    the 1M-token pairs (run side by side or one after the other on a quiet machine)."""
    rows = []
    for code, without, with_, n, times in (
            ("before (checkpointed slices)", mmap, mmap, 65536, False), ("before", mmap, mmap, 131072, False),
            ("before", before_1m, before_1m, 2**20, True), ("now (`nn/chunked.py`)", mmap, chunked, 65536, False),
            ("now", mmap, chunked, 131072, False), ("now", now_1m, now_1m, 2**20, True),
            ("now", now_1m_sp2, now_1m_sp2, 2**20, True)):
        a, b = _point(without, "mlp_chunks", n), _point(with_, "mlp_chunks+local4", n)
        bold = (lambda x: f"**{x}**") if code.startswith("now") and times else str
        extra = b["bytes_per_token"] - a["bytes_per_token"]
        extra = f"{extra:+.0f} B/token ({percent(b['bytes_per_token'], a['bytes_per_token'])})"
        rows.append([code, bold(grouped(n)), bold(a["sp"]), grouped(a["bytes_per_token"]),
                     grouped(b["bytes_per_token"]), bold(extra),
                     *([grouped(a["step_s"]), grouped(b["step_s"]), bold(percent(b["step_s"], a["step_s"]))]
                       if times else ["—"] * 3)])
    return markdown_table(["code", "N", "sp", "without: B/token", "with w = 4: B/token", "extra memory",
                           "without: step s", "with: step s", "extra time"], rows)


def before_after_table(before_1: dict, before_2: dict, after_1: dict, after_2: dict) -> str:
    """Each variant's step in both rounds before and after, and its lower peak per token of the two rounds."""
    rows = []
    for r in after_1["runs"]:
        v, chunk = r["variant"], r["token_chunk"]
        before = [_point(p, v, r["n"]) for p in (before_1, before_2)]
        after = [_point(p, v, r["n"]) for p in (after_1, after_2)]
        rows.append([v.replace("+mlp_chunks", " + MLP chunks") + (f" ({chunk})" if chunk else ""),
                     ", ".join(f"{x['step_s']:.1f}" for x in before), ", ".join(f"{x['step_s']:.1f}" for x in after),
                     f"{grouped(min(x['bytes_per_token'] for x in before))} → "
                     f"{grouped(min(x['bytes_per_token'] for x in after))}"])
    return markdown_table(["variant", "step before (s), 2 rounds", "step after (s), 2 rounds",
                           "peak before → after (B/token, the lower round)"], rows)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, s), style in zip(payload["summary"].items(), ("o-", "s-", "^-", "D-", "o--", "s--", "^--", "D--"),
                                strict=False):
        pts = sorted((r for r in payload["runs"] if (r["variant"], r["sp"]) == (s["variant"], s["sp"]) and r["fits"]),
                     key=lambda r: r["n"])
        ax.plot([r["n"] for r in pts], [r["peak_bytes"] / harness.GIB for r in pts], style, label=name)
    ax.axhline(payload["cap_gib"], color="grey", ls=":", label=f"cap {payload['cap_gib']} GiB")
    ax.axvline(payload["paper_forward_tokens"], color="red", ls=":", label="paper: 3.5M tokens (1 layer, fwd)")
    ax.set(xscale="log", yscale="log", xlabel="tokens N", ylabel="peak memory of a training step (GiB, all ranks)",
           title="n-body model, one full training step")
    ax.legend(fontsize=7)
    harness.save_figure(fig, path)


if __name__ == "__main__":
    main()
