"""Which CPU thread policy holds its speed both alone and beside other work.

Each point is a fresh interpreter with the policy's environment (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``: both are
read when OpenMP starts, so only a fresh process can change them) timing full training steps (forward, backward,
Adam) of the n-body model, the paper's widths: the README's default run (batch 100 x 5 tokens) and one long
sequence (``--long-tokens``, MLPs in chunks). ``beside busy``: one other process spins on a core for the whole point,
as any other job on a shared node does. Steps per second are medians over repeats; read the ratios of points
measured in one invocation (alone / beside, one policy against another), never absolute speeds on a shared box.

    python benchmarks/thread_policy.py          # writes results/thread_policy.{json,png}
    python benchmarks/thread_policy.py --quick  # smoke run (results in a temp dir)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.tables import markdown_table  # noqa: E402

# name -> what a point's environment sets of POLICY_KEYS (the rest unset: the package's defaults apply)
POLICIES = {
    "package default": {},
    "2 threads, libgomp's waits": {"OMP_NUM_THREADS": "2"},
    "2 threads, passive waits": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}
POLICY_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")


def measure(point: dict) -> dict:
    import dist_hyena  # noqa: I001 (first: the package's defaults apply before torch starts OpenMP)
    import torch

    from dist_hyena.runtime import apply_cpu_thread_policy

    apply_cpu_thread_policy()
    torch.manual_seed(0)
    batch, n = point["batch"], point["tokens"]
    model = dist_hyena.SE3HyenaModel(dist_hyena.HyenaConfig(mlp_token_chunk=point["token_chunk"]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, f, target = torch.randn(batch, n, 2, 3), torch.randn(batch, n, 1), torch.randn(batch, n, 1, 3)

    def step():
        opt.zero_grad(set_to_none=True)
        (model(x, f)[0] - target).square().mean().backward()
        opt.step()

    step()  # warm-up: allocator, first-call costs
    times = harness.timed(step, min_repeats=3, max_repeats=200, budget_s=point["budget_s"])
    return dict(point, threads_used=torch.get_num_threads(), wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                step_s=harness.median(times), steps_per_s=1.0 / harness.median(times), repeats=len(times))


def run_point(point: dict, env_overrides: dict, busy: bool, timeout_s: float) -> dict:
    """One point in a fresh interpreter whose environment holds only ``env_overrides`` of POLICY_KEYS, beside a
    spinning process when ``busy``."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0.0)  # the neighbour is running before the point starts
        result = harness.run_point(__file__, point, timeout_s,
                                   env_changes={**dict.fromkeys(POLICY_KEYS), **env_overrides})
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if "error" in result:
        raise SystemExit(f"point {point} failed: {result['error']}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="smoke run: short budgets, results to a temp dir")
    ap.add_argument("--long-tokens", type=int, default=4096, help="tokens of the long-sequence workload")
    ap.add_argument("--budget-s", type=float, default=8.0, help="seconds of timed steps per point")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all points (medians reported)")
    args = ap.parse_args()
    if args.point:
        print(json.dumps(measure(json.loads(args.point))))
        return
    policies = POLICIES
    if args.quick:
        args.budget_s, args.rounds = 0.3, 1
        policies = {k: POLICIES[k] for k in ("package default", "1 thread")}
    args.out = harness.results_dir(args)
    workloads = {"default run (100 x 5 tokens)": {"batch": 100, "tokens": 5, "token_chunk": None},
                 f"long sequence ({args.long_tokens} tokens)": {"batch": 1, "tokens": args.long_tokens,
                                                                 "token_chunk": 1024}}
    if args.quick:  # the smoke run: every policy and load, one workload (each point is a fresh interpreter)
        workloads = dict(list(workloads.items())[:1])
    runs = []
    for round_ in range(args.rounds):  # interleaved: a drift in the machine's load shows up in every setting
        for workload, shape in workloads.items():
            for policy, env in policies.items():
                for busy in (False, True):
                    point = dict(shape, workload=workload, policy=policy, busy=busy, round=round_,
                                 budget_s=args.budget_s)
                    runs.append(run_point(point, env, busy, timeout_s=600))
                    print(f"[thread_policy] {workload} | {policy} | {'beside busy' if busy else 'alone'}: "
                          f"{runs[-1]['steps_per_s']:.2f} steps/s", flush=True)
    report(runs, args.out, harness.settings(args))


def report(runs: list[dict], out: Path, config: dict) -> None:
    summary = []
    for workload in dict.fromkeys(r["workload"] for r in runs):
        for policy in dict.fromkeys(r["policy"] for r in runs):
            rate = {busy: harness.median([r["steps_per_s"] for r in runs if (r["workload"], r["policy"], r["busy"])
                                          == (workload, policy, busy)]) for busy in (False, True)}
            used = next(r for r in runs if (r["workload"], r["policy"]) == (workload, policy))
            summary.append({"workload": workload, "policy": policy, "threads": used["threads_used"],
                            "wait_policy": used["wait_policy"], "alone_steps_per_s": rate[False],
                            "beside_busy_steps_per_s": rate[True], "slowdown_beside_busy": rate[False] / rate[True]})
    payload = {"benchmark": "thread_policy", "machine": harness.machine(), "runs": runs, "summary": summary}
    harness.save("thread_policy", payload, out, required=("summary",), config=config)
    plot(summary, out / "thread_policy.png")


def summary_table(payload: dict) -> str:
    """Steps per second of every workload and policy, alone and beside a busy process (docs/threads.md)."""
    return markdown_table(["workload", "policy", "threads", "alone (steps/s)", "beside one busy process", "slowdown"],
                          [[r["workload"], r["policy"], r["threads"], f"{r['alone_steps_per_s']:.2f}",
                            f"{r['beside_busy_steps_per_s']:.2f}", f"{r['slowdown_beside_busy']:.2f}×"]
                           for r in payload["summary"]])


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(s["workload"] for s in summary))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4))
    for ax, workload in zip(axes if len(workloads) > 1 else [axes], workloads, strict=True):
        rows = [s for s in summary if s["workload"] == workload]
        pos = range(len(rows))
        ax.bar([p - 0.2 for p in pos], [s["alone_steps_per_s"] for s in rows], 0.4, label="alone")
        ax.bar([p + 0.2 for p in pos], [s["beside_busy_steps_per_s"] for s in rows], 0.4,
               label="beside one busy process")
        ax.set_xticks(list(pos), [s["policy"].replace(", ", ",\n") for s in rows], fontsize=7)
        ax.set(ylabel="training steps / s", title=workload)
        ax.legend(fontsize=7)
    harness.save_figure(fig, path)


if __name__ == "__main__":
    main()
