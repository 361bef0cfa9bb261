"""FLOP per token and the achieved fraction of the same-run matmul rate, for the
training step (forward, backward, Adam) at the recall and n-body widths, and the speed-up over a previous release
measured side by side.

Each point is a fresh interpreter that imports the package from one source tree: this checkout, and with
``--against REV`` also that git revision (``git archive`` into a temporary folder), the two trees' points
interleaved round by round, so a drift in the machine's load reaches both.

FLOPs are the step's *useful* floating-point work, the same number for both trees: the matrix products that
``torch.utils.flop_counter`` counts in this tree's step, plus the geometric product's 64 non-zero terms per row and
channel (2 FLOP each, 3x for forward and backward), which run as elementwise multiply-adds and which the counter
does not see. (The dense product of earlier releases did 8x more matrix-product work for the same result: its
counter total, ``counted_flop_per_token``, is reported per tree but is not useful work.) Since the Clifford MLPs
skip the zeros of their compact inputs and compute only the blades they read, this tree executes far fewer matrix
FLOPs for the same result; ``dense_flop_per_token`` counts this tree's step with those maps dense again (every blade,
every input channel: the work counted when the goals of benchmarks/README.md were set), and
``fraction_of_matmul_dense`` is the step's rate at that count. The matmul rate is a
1024 x 1024 float32 matrix product timed in the same process, same threads. The optimizer is torch's fused Adam
(what the trainer builds) for both trees, so the comparison is the model's step.

    python benchmarks/step_efficiency.py --against v0.1.0   # writes results/step_efficiency.{json,png}
    python benchmarks/step_efficiency.py --quick            # smoke run (results in a temp dir)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import grouped, markdown_table  # noqa: E402

# name -> (HyenaConfig keys, batch, tokens): the workloads of benchmarks/README.md, "Make it fast"
WORKLOADS = {
    "recall, paper widths (hidden 128), 128 tokens x 8": (
        {"head": "recall", "n_blocks": 3, "vector_width": 1, "scalar_width": 16, "hidden_width": 128,
         "gate_width": 8, "position_channels": []}, 8, 128),
    "recall, hidden 32, 64 tokens x 32": (
        {"head": "recall", "n_blocks": 3, "vector_width": 1, "scalar_width": 16, "hidden_width": 32,
         "gate_width": 8, "position_channels": []}, 32, 64),
    "n-body, paper widths, 5 tokens x 100": ({}, 100, 5),
    "n-body, paper widths, 32768 tokens": ({"mlp_token_chunk": 16384}, 1, 32768),
}
QUICK = {"recall, hidden 8, 16 tokens x 2": (
    {"head": "recall", "n_blocks": 1, "vector_width": 1, "scalar_width": 4, "hidden_width": 8, "gate_width": 4,
     "position_channels": []}, 2, 16)}


def _product_flop(model, x, f) -> int:
    """The geometric products' elementwise FLOPs for one forward (2 per non-zero term, row and channel)."""
    import torch

    from dist_hyena.nn import GeometricProduct

    total = [0]

    def hook(module, inputs, output):
        total[0] += 2 * 64 * output.numel() // 8  # output: [8, rows, channels] (v0.1.0: [rows, channels, 8])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, GeometricProduct)]
    try:
        with _layers_one_by_one(), torch.no_grad():
            model(x, f)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _layers_one_by_one():
    """Every Clifford MLP runs its layers as modules and tensor ops (``CliffordMLP._fusable`` off): what the FLOP
    counter and the product hooks see. The compiled MLP (``fused.CompactMLP``) does the same products in one call."""
    from unittest import mock

    from dist_hyena.nn import clifford

    return mock.patch.object(clifford.CliffordMLP, "_fusable", lambda self, x: False, create=True)


def _counted(loss) -> int:
    """The FLOPs ``torch.utils.flop_counter`` counts in one forward and backward of ``loss()``."""
    from torch.utils.flop_counter import FlopCounterMode

    with _layers_one_by_one(), FlopCounterMode(display=False) as counter:
        loss().backward()
    return counter.get_total_flops()


def _dense_counted(loss) -> int | None:
    """The counter's total with every vector/scalar MLP on dense multivectors (embed, all 8 blades, read); None in
    trees whose MLPs have no compact path."""
    from unittest import mock

    from dist_hyena.nn import VectorScalarMLP, algebra

    if not hasattr(algebra, "Compact"):
        return None

    def dense(self, x, f):
        return algebra.read(self.mlp(algebra.embed(x, f)), self.vectors_out, self.scalars_out)

    with mock.patch.object(VectorScalarMLP, "_map", dense):
        return _counted(loss)


def _matmul_rate(repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    times = harness.timed(lambda: a @ b, min_repeats=repeats, max_repeats=repeats, budget_s=60)
    return 2 * 1024**3 / harness.median(times)


def measure(point: dict) -> dict:
    sys.path.insert(0, point["tree"])  # this point's source tree, ahead of the checkout that runs the script
    import torch

    import dist_hyena
    from dist_hyena.data.recall_task import POSITION_DIM

    assert Path(dist_hyena.__file__).resolve().is_relative_to(Path(point["tree"]).resolve()), dist_hyena.__file__
    keys, batch, n = point["config"], point["batch"], point["tokens"]
    recall = keys.get("head") == "recall"
    cfg = dist_hyena.HyenaConfig(**keys, **({"vector_in": 1, "scalar_in": POSITION_DIM} if recall else {}))
    torch.manual_seed(0)
    model = dist_hyena.SE3HyenaModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # the trainer's Adam, for both trees
    x, f = torch.randn(batch, n, cfg.vector_in, 3), torch.randn(batch, n, cfg.scalar_in)

    def loss():
        out_x, out_f = model(x, f)
        return out_x.square().mean() + out_f.square().mean()

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    counted, dense = _counted(loss), _dense_counted(loss)
    product = 3 * _product_flop(model, x, f)
    step()
    times = harness.timed(step, min_repeats=3, max_repeats=100, budget_s=point["budget_s"])
    rate = _matmul_rate()
    return dict(point, step_s=harness.median(times), repeats=len(times), counted_flop_per_token=counted / (batch * n),
                dense_counted_flop_per_token=None if dense is None else dense / (batch * n),
                product_flop_per_token=product / (batch * n), matmul_flop_per_s=rate,
                threads_used=torch.get_num_threads())


def _tree(rev: str) -> Path:
    """``rev`` of this repository as a plain folder (``git archive``), removed with the interpreter."""
    out = Path(tempfile.mkdtemp(prefix=f"step-efficiency-{rev}-"))
    archive = subprocess.run(["git", "-C", str(harness.ROOT), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in runs):
        mine = [r for r in runs if r["workload"] == workload and r["tree_name"] == "this checkout"]
        tokens = mine[0]["batch"] * mine[0]["tokens"]
        # useful work: this tree's counted matrix products plus its products' elementwise terms
        flop = mine[0]["counted_flop_per_token"] + mine[0]["product_flop_per_token"]
        dense = (mine[0].get("dense_counted_flop_per_token") or mine[0]["counted_flop_per_token"]) \
            + mine[0]["product_flop_per_token"]
        for name in dict.fromkeys(r["tree_name"] for r in runs):
            pts = [r for r in runs if r["workload"] == workload and r["tree_name"] == name]
            step_s = harness.median([r["step_s"] for r in pts])
            rate = harness.median([r["matmul_flop_per_s"] for r in pts])
            rows.append({"workload": workload, "tree": name, "step_s": step_s, "tokens_per_step": tokens,
                         "useful_flop_per_token": flop, "counted_flop_per_token": pts[0]["counted_flop_per_token"],
                         "achieved_gflop_per_s": flop * tokens / step_s / 1e9, "matmul_gflop_per_s": rate / 1e9,
                         "fraction_of_matmul": flop * tokens / step_s / rate, "dense_flop_per_token": dense,
                         "fraction_of_matmul_dense": dense * tokens / step_s / rate})
        base = {r["tree"]: r["step_s"] for r in rows if r["workload"] == workload}
        for r in rows:
            if r["workload"] == workload:
                r["speedup_vs_this_checkout"] = base["this checkout"] / r["step_s"]
    return rows


def summary_table(payload: dict) -> str:
    """Each workload's step on the other tree and on this checkout, the speed-up and the share of the matmul rate."""
    other = next(t for t in payload["trees"] if t != "this checkout")
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in payload["summary"]):
        old, new = (next(r for r in payload["summary"] if (r["workload"], r["tree"]) == (workload, tree))
                    for tree in (other, "this checkout"))
        chunk = next(r for r in payload["runs"] if r["workload"] == workload)["config"].get("mlp_token_chunk")
        dense = "dense_flop_per_token" in new  # (results written before the compact MLPs have no dense count)
        rows.append([workload.replace(" x ", " × ") + (f" (MLP chunks {grouped(chunk)})" if chunk else ""),
                     f"{old['step_s']:.3f} → {new['step_s']:.3f}", f"**{old['step_s'] / new['step_s']:.2f}×**",
                     f"{new['useful_flop_per_token'] / 1e6:.2f} M"
                     + (f" ({new['dense_flop_per_token'] / 1e6:.2f} M)" if dense else ""),
                     f"{100 * old['fraction_of_matmul']:.1f} → {100 * new['fraction_of_matmul']:.1f}",
                     f"{100 * old['fraction_of_matmul_dense']:.1f} → {100 * new['fraction_of_matmul_dense']:.1f}"
                     if dense else "–"])
    return markdown_table(["workload", f"step {other} → now (s)", "speed-up", "FLOP/token executed (dense layers)",
                           f"% of the same-run matmul rate, executed FLOPs, {other} → now",
                           "% at the dense layers' FLOPs"], rows)


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(s["workload"] for s in summary))
    trees = list(dict.fromkeys(s["tree"] for s in summary))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(trees)
    for t, tree in enumerate(trees):
        rows = {s["workload"]: s for s in summary if s["tree"] == tree}
        pos = [w + (t - (len(trees) - 1) / 2) * width for w in range(len(workloads))]
        axes[0].bar(pos, [rows[w]["step_s"] for w in workloads], width, label=tree)
        axes[1].bar(pos, [100 * rows[w]["fraction_of_matmul"] for w in workloads], width, label=tree)
    for ax, label in zip(axes, ("step time (s, log)", "useful FLOP/s, % of the same-run matmul rate"), strict=True):
        ax.set_xticks(range(len(workloads)), [w.replace(", ", ",\n", 1) for w in workloads], fontsize=7)
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_yscale("log")
    fig.suptitle("training step (forward, backward, Adam), one thread")
    harness.save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_point_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="smoke run: one tiny model, results to a temp dir")
    ap.add_argument("--against", metavar="REV", help="a git revision to measure side by side (the previous release)")
    ap.add_argument("--budget-s", type=float, default=10.0, help="seconds of timed steps per point")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all points (medians reported)")
    args = ap.parse_args()
    if harness.serve_point(args, measure):
        return
    workloads = WORKLOADS
    if args.quick:
        workloads, args.budget_s, args.rounds = QUICK, 0.2, 1
    args.out = harness.results_dir(args)
    trees = {"this checkout": harness.ROOT}
    if args.against:
        trees[args.against] = _tree(args.against)
    runs = []
    for round_ in range(args.rounds):
        for workload, (config, batch, tokens) in workloads.items():
            for name, tree in trees.items():
                point = {"workload": workload, "config": config, "batch": batch, "tokens": tokens, "round": round_,
                         "tree_name": name, "tree": str(tree), "budget_s": args.budget_s, "threads": args.threads}
                result = harness.run_point(__file__, point, timeout_s=1800)
                if "error" in result:
                    raise SystemExit(f"point {workload} ({name}) failed: {result['error']}")
                runs.append(result)
                print(f"[step_efficiency] {workload} | {name}: {result['step_s']:.4f} s/step", flush=True)
    summary = summarise(runs)
    payload = {"benchmark": "step_efficiency", "machine": harness.machine(), "trees": list(trees), "runs": runs,
               "summary": summary}
    harness.save("step_efficiency", payload, args.out, required=("trees", "summary"), config=harness.settings(args))
    plot(summary, args.out / "step_efficiency.png")


if __name__ == "__main__":
    main()
