"""Accuracy (benchmarks item 6): the paper's n-body table and associative recall, trained by the real trainer.

Every run is `dist_hyena.train.train` on a config from `dist_hyena/configs/` plus overrides (the same code path as
`python launch/train.py --config ... key=value`), one at a time, in this process, with `eval.test = true`: the
trainer evaluates the test split at every new best validation MSE, so each run reports the test metrics at its
best validation step (`summary["best"]`).

    python benchmarks/accuracy.py --part nbody  --seeds 0 1 2 --steps 600
    python benchmarks/accuracy.py --part recall --lengths 32 256 --steps 150
    python benchmarks/accuracy.py --part long   --eval-lengths 256 4096 65536 --eval-samples 16

- nbody: SE(3)-Hyena, the paper's vector attention and the linear baseline (`baseline=linear`) on the 5-body data
  (1000 / 2000 / 2000 systems), test MSE at best validation, mean ± std over seeds, beside the paper's numbers.
- recall: SE(3)-Hyena vs vector attention, random and fixed vocabulary, per length: test MSE and accuracy (the
  prediction's nearest vector of the sequence is the target value; chance ≈ 1 / vocab) at best validation.
- long: the recall models of `--part recall` trained at the longest length (SE(3)-Hyena only), evaluated at
  longer sequences up to ≥ 64k tokens, where the O(N²) attention cannot run (its N x N x 3 float32 cross-product
  tensor alone would be 48 GiB at 65 536 tokens).

Results merge into `<out>/accuracy.json` (one key per part) and `<out>/accuracy.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one math thread (benchmarks/README.md), read by the runtime too

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import envelope, harness  # noqa: E402
from benchmarks.tables import markdown_table  # noqa: E402

CONFIGS = harness.ROOT / "dist_hyena" / "configs"
PAPER_NBODY = {"hyena": 0.0018, "attention": 0.0019, "linear": 0.0322, "egnn": 0.0071, "local": None}
LABELS = {"hyena": "SE(3)-Hyena", "attention": "vector attention", "linear": "linear", "egnn": "EGNN",
          "local": "SE(3)-Hyena + local context (dist_hyena/configs/nbody5_local.yaml)"}
# n-body rows trained by a config of their own, at its own budget; the rows that are whole baseline models
# (the others name the mixer of SE3HyenaModel).
OWN_CONFIG = {"local": "nbody5_local.yaml"}
MIXER_OVERRIDES = {"linear": ["model.baseline=linear"], "egnn": ["model.baseline=egnn"]}
PAPER_BUDGET = {"nbody": "Adam lr 1e-4 constant, weight decay 1e-5, batch 100, 3000 steps (300 epochs of 1000)",
                "recall": "Adam lr 1e-3 cosine, weight decay 1e-5, batch 32, 18750 steps (300 epochs of 2000), "
                          "widths invariant 16 / equivariant 128 / gating 8"}


def train_run(config: str, overrides: list[str]) -> dict:
    """One training run through the trainer -> its summary plus wall time."""
    from dist_hyena.train import load_config, train

    cfg = load_config(CONFIGS / config, overrides)
    t0 = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 1), "steps": summary["steps"], "best": summary["best"],
            "last_val_mse": summary["val_mse"], "last_loss": summary["last_loss"], "model": summary.get("model")}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def nbody_common(args, work: Path) -> tuple[dict, list[str]]:
    """The split sizes and the overrides every n-body run shares: data, budget, evaluation."""
    sizes = {"train": 1000, "val": 2000, "test": 2000} if not args.quick else {"train": 100, "val": 50, "test": 50}
    data = work / ("data/nbody5_{train}_{val}_{test}".format(**sizes))
    every = max(1, args.steps // 10)
    return sizes, [f"run.out_dir={work / 'runs'}", f"data.path={data}", "data.seed=0",
                   "data.generate=" + json.dumps(sizes), f"train.steps={args.steps}", f"optim.lr={args.nbody_lr}",
                   f"optim.schedule={args.nbody_schedule}", "optim.warmup_steps=20", "optim.min_lr_ratio=0.05",
                   f"eval.every={every}", f"eval.batch_size={min(500, sizes['val'])}", "eval.test=true",
                   "checkpoint.every=0", "checkpoint.keep=1", f"log.every={every}"]


# One change at a time against the paper's model (dist_hyena/configs/nbody5.yaml), at the --steps / --nbody-lr budget.
ABLATIONS = {
    "paper": ("the paper's SE(3)-Hyena (1 vector + 8 scalar channels, hidden 16, 2 blocks)", []),
    "no_global_mixer": ("global convolution replaced by zeros (mixer=none)", ["model.mixer=none"]),
    "vector_width_4": ("4 vector channels in the stream", ["model.vector_width=4"]),
    "linear_path": ("linear path in the embedding and the head", ["model.linear_path=true"]),
    "no_layer_norm": ("no layer norm in the Clifford MLPs", ["model.layer_norm=false"]),
    "gate_squared_norm": ("the gates read the squared grade norm (the reference's), not the norm",
                          ["model.gate_invariant=squared_norm"]),
    "permute": ("random particle order in training (data.augment=permute)", ["data.augment=permute"]),
    "local_w2": ("local geometric context, w = 2 (local_window=2)", ["model.local_window=2"]),
    "local_w2_vw4": ("local context w = 2 and 4 vector channels", ["model.local_window=2", "model.vector_width=4"]),
    "local_w2_vw4_permute": ("local context w = 2, 4 vector channels, permute (nbody5_local's model)",
                             ["model.local_window=2", "model.vector_width=4", "data.augment=permute"]),
}


def run_ablation(args, work: Path, payload: dict) -> dict:
    """Every --ablations variant x --seeds. Runs already in `previous` at the same settings are kept and not run
    again (a stopped campaign continues where it stopped)."""
    _, common = nbody_common(args, work)
    previous = payload.get("ablation", {})
    same = previous.get("settings", {}).get("steps") == args.steps
    runs = previous.get("runs", []) if same else []
    done = {(r["variant"], r["seed"]) for r in runs}
    for variant in args.ablations:
        for seed in args.seeds:
            if (variant, seed) in done:
                continue
            name = f"ablation_{variant}_s{seed}"
            r = train_run("nbody5.yaml", common + ABLATIONS[variant][1] + [f"run.name={name}", f"run.seed={seed}"])
            runs.append({"variant": variant, "seed": seed, **r, "test_mse": r["best"]["test_mse"]})
            print(f"[accuracy] {name}: test MSE {r['best']['test_mse']:.5f} at best val (step "
                  f"{r['best']['step']}), {r['wall_s']} s", flush=True)
            harness.save("accuracy", {**payload, "ablation": ablation_payload(args, runs)}, args.out,
                         required=("ablation",), config=harness.settings(args))
    return ablation_payload(args, runs)


def ablation_payload(args, runs: list[dict]) -> dict:
    table = []
    for variant in ABLATIONS:
        rs = [r for r in runs if r["variant"] == variant]
        if rs:
            mean, std = mean_std([r["test_mse"] for r in rs])
            table.append({"variant": variant, "change": ABLATIONS[variant][0], "overrides": ABLATIONS[variant][1],
                          "test_mse_mean": mean, "test_mse_std": std, "seeds": [r["seed"] for r in rs],
                          "train_loss_last": statistics.fmean(r["last_loss"] for r in rs),
                          "wall_s_mean": statistics.fmean(r["wall_s"] for r in rs)})
    settings = {"steps": args.steps, "lr": args.nbody_lr, "schedule": args.nbody_schedule, "batch_size": 100,
                "data": "5-body, 1000 / 2000 / 2000 systems, data seed 0"}
    return {"settings": settings, "runs": runs, "table": table}


def run_nbody(args, work: Path) -> dict:
    sizes, common = nbody_common(args, work)
    every = max(1, args.steps // 10)
    # A model with its own budget (its config's steps, lr and schedule) shares only the data and the evaluation.
    own_budget = [o for o in common if o.split("=")[0] in ("run.out_dir", "data.path", "data.seed", "data.generate",
                                                           "eval.test", "eval.batch_size", "checkpoint.every",
                                                           "checkpoint.keep")]
    runs = []
    for mixer in args.mixers:
        for seed in args.seeds:
            name = f"{args.nbody_key}_{mixer}_s{seed}"
            if mixer in OWN_CONFIG:
                quick = [f"train.steps={args.steps}"] if args.quick else []
                config, overrides = OWN_CONFIG[mixer], own_budget + quick
            else:
                config, overrides = "nbody5.yaml", common + MIXER_OVERRIDES.get(mixer, [f"model.mixer={mixer}"])
            r = train_run(config, overrides + [f"run.name={name}", f"run.seed={seed}"])
            runs.append({"mixer": mixer, "seed": seed, **r, "test_mse": r["best"]["test_mse"]})
            print(f"[accuracy] {name}: test MSE {r['best']['test_mse']:.5f} at best val (step "
                  f"{r['best']['step']}), {r['wall_s']} s", flush=True)
    table = []
    for mixer in args.mixers:
        values = [r["test_mse"] for r in runs if r["mixer"] == mixer]
        mean, std = mean_std(values)
        table.append({"mixer": mixer, "model": LABELS[mixer], "test_mse_mean": mean, "test_mse_std": std,
                      "seeds": len(values), "paper_mse": PAPER_NBODY[mixer],
                      "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs if r["mixer"] == mixer)})
    settings = {"splits": sizes, "steps": args.steps, "batch_size": 100, "lr": args.nbody_lr,
                "schedule": f"{args.nbody_schedule}, 20 warmup steps"
                + (", to 5% of lr" if args.nbody_schedule == "cosine" else ""),
                "weight_decay": 1e-5, "eval_every": every,
                "widths": "paper's: invariant 8, equivariant 16, gating 8, 2 blocks", "seeds": args.seeds,
                "data_seed": 0, "paper": PAPER_BUDGET["nbody"]}
    return {"settings": settings, "paper": PAPER_NBODY, "runs": runs, "table": table}


COLLECT_PROTOCOL = {
    "nbody_runs": "test MSE at best validation; 5-body, 1000 / 2000 / 2000 systems (data/nbody5, seed 0)",
    "recall_runs": "test accuracy and MSE at best validation; generated recall (data seed 0), references: the "
                   "no-retrieval guess of a value of the sequence and the MSE of predicting their mean",
}


def collect_runs(args, payload: dict) -> tuple[str, dict]:
    """The rows of models trained by `launch/train.py` runs (``--run-dirs``, one per seed, all of one model and
    task: ``--label``): each run's summary.json (test metrics at best validation) and config.json (seed, budget,
    data). n-body runs go to ``nbody_runs``, recall runs to ``recall_runs``; rows of other labels are kept."""
    runs = []
    for run_dir in args.run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        cfg = json.loads((run_dir / "config.json").read_text())
        best = summary["best"]
        runs.append({"run_dir": str(run_dir), "seed": cfg["run"]["seed"], "steps": summary["steps"],
                     "batch_size": cfg["train"]["batch_size"], "best_step": best["step"], "val_mse": best["val_mse"],
                     "test_mse": best["test_mse"], "test_accuracy": best.get("test_accuracy"),
                     "last_loss": summary["last_loss"], "lr": cfg["optim"]["lr"],
                     "schedule": cfg["optim"]["schedule"], "model": cfg["model"], "data": cfg["data"]})
    heads = {r["model"]["head"] for r in runs}
    if len(heads) != 1:
        raise SystemExit(f"--run-dirs mix tasks ({sorted(heads)}): collect one model of one task at a time")
    key = "recall_runs" if heads == {"recall"} else "nbody_runs"
    row = {"label": args.label, "command": args.command, "runs": runs}
    row["test_mse_mean"], row["test_mse_std"] = mean_std([r["test_mse"] for r in runs])
    if key == "recall_runs":
        gen = runs[0]["data"]["generate"]
        row["test_accuracy_mean"], row["test_accuracy_std"] = mean_std([r["test_accuracy"] for r in runs])
        row.update(n_tokens=gen["n_tokens"], train_lengths=gen.get("train_lengths"), variant=gen["variant"],
                   positions=gen.get("positions", "index"),
                   reference=recall_references(gen["n_tokens"], gen["variant"], gen["vocab_size"], gen["test"]))
    rows = {r["label"]: r for r in payload.get(key, {}).get("rows", [])}
    rows[args.label] = row
    return key, {"protocol": COLLECT_PROTOCOL[key], "rows": list(rows.values())}


def recall_overrides(work: Path, length: int, variant: str, sizes: dict, args) -> list[str]:
    gen = {"n_tokens": length, "vocab_size": args.vocab, "variant": variant, **sizes}
    every = max(1, args.steps // 4)
    return [f"run.out_dir={work / 'runs'}", "data.source=generated", "data.seed=0", "data.generate=" + json.dumps(gen),
            f"model.hidden_width={args.hidden}", f"train.steps={args.steps}", f"train.batch_size={args.batch}",
            f"optim.lr={args.recall_lr}", "optim.schedule=cosine", "optim.warmup_steps=10",
            "optim.min_lr_ratio=0.05", f"eval.every={every}", f"eval.batch_size={min(32, sizes['val'])}",
            "eval.test=true",
            "checkpoint.every=0", "checkpoint.keep=1", f"log.every={every}"]


def run_recall(args, work: Path, previous: dict | None) -> dict:
    """Train the grid of --lengths x --variants x mixers; runs of other lengths already in `previous` are kept
    (so lengths can be run with different --steps / --batch in separate invocations)."""
    n_eval = 16 if args.quick else args.eval_size
    sizes = {"train": 64 if args.quick else 2000, "val": n_eval, "test": n_eval}
    runs = [r for r in (previous or {}).get("runs", []) if r["n_tokens"] not in args.lengths]
    for length in args.lengths:
        for variant in args.variants:
            for mixer in ("hyena", "attention"):
                name = f"recall_{mixer}_{variant}_{length}"
                ov = recall_overrides(work, length, variant, sizes, args)
                r = train_run("recall.yaml", ov + [f"run.name={name}", "run.seed=0", f"model.mixer={mixer}"])
                b = r["best"]
                runs.append({"mixer": mixer, "variant": variant, "n_tokens": length, "batch_size": args.batch,
                             "lr": args.recall_lr, "splits": sizes, **r, "test_mse": b["test_mse"],
                             "test_accuracy": b["test_accuracy"]})
                print(f"[accuracy] {name}: test MSE {b['test_mse']:.4f}, accuracy {b['test_accuracy']:.3f} at best "
                      f"val (step {b['step']}), {r['wall_s']} s", flush=True)
    runs.sort(key=lambda r: (r["n_tokens"], r["variant"], r["mixer"]))
    settings = {"per_run": "steps, batch_size, lr and split sizes are recorded with each run",
                "schedule": "cosine, 10 warmup steps, to 5% of lr", "weight_decay": 1e-5, "vocab_size": args.vocab,
                "chance_accuracy": 1 / args.vocab, "seed": 0,
                "widths": f"invariant 16, equivariant {args.hidden}, gating 8, 3 blocks",
                "paper": PAPER_BUDGET["recall"]}
    return {"settings": settings, "runs": runs}


def recall_references(length: int, variant: str, vocab: int, samples: int) -> dict:
    """What needs no retrieval, on the same test sequences: guessing one of the sequence's value vectors (expected
    accuracy; values repeat within a sequence, so this beats 1 / vocab) and predicting the mean of its values (MSE)."""
    import numpy as np

    from dist_hyena.data.recall_task import RecallTask

    task = RecallTask(length, seed=0, vocab_size=vocab, variant=variant)
    pad = length - 1 - 2 * ((length - 1) // 2)
    guess, mse = [], []
    for i in range(samples):
        tokens, target = task.sample("test", i)
        values = tokens[pad + 1:-1:2]
        guess.append(1 / len(np.unique(values.round(5), axis=0)))
        mse.append(float(np.mean((values.mean(axis=0) - target) ** 2)))
    return {"n_tokens": length, "variant": variant, "samples": samples, "value_guess_accuracy": float(np.mean(guess)),
            "value_mean_mse": float(np.mean(mse))}


def _sp_mesh():
    """Under torchrun (WORLD_SIZE > 1): every rank one SP rank of one sample; else None (one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    from dist_hyena.parallel import init_mesh
    from dist_hyena.runtime import init_distributed

    init_distributed()
    import torch.distributed as dist

    return init_mesh(sp=dist.get_world_size())


LONG_TOKEN_CHUNK = 32768  # MLPs and local contexts run this many tokens at a time (exact; bounds the memory)


def run_long(args, work: Path, payload: dict) -> dict:
    """Evaluate trained recall models on longer sequences: those of `--run-dirs` (launch/train.py runs; their
    config.json says the vocabulary and training length), else the recall part's SE(3)-Hyena models at its longest
    length. Under torchrun each rank holds a token block of every sequence (sequence parallelism). Rows of other
    (model, length, sp) points in `payload` are kept."""
    import torch

    from dist_hyena.data import GeneratedRecall
    from dist_hyena.tasks import recall_hits
    from dist_hyena.train.export import load_exported

    models = []  # (label, exported model, variant, vocab, trained at (the longest training length), positions)
    for run_dir in args.run_dirs:
        gen = json.loads((run_dir / "config.json").read_text())["data"]["generate"]
        models.append((run_dir.name, run_dir / "model.pt", gen["variant"], gen["vocab_size"],
                       max([gen["n_tokens"], *gen.get("train_lengths", [])]), gen.get("positions", "index")))
    if not models:
        recall = payload.get("recall")
        if not recall:
            raise SystemExit("--part long needs --run-dirs or the recall results (run --part recall first, same --out)")
        trained = [r for r in recall["runs"] if r["mixer"] == "hyena" and r["variant"] in args.variants]
        top = max(r["n_tokens"] for r in trained)
        models = [(f"recall_hyena_{r['variant']}_{top}", r["model"], r["variant"], args.vocab, top, "index")
                  for r in trained if r["n_tokens"] == top]
    mesh = _sp_mesh()
    sp = mesh.sp if mesh else 1
    new = []
    for label, path, variant, vocab, top, positions in models:
        model = load_exported(path, mesh=mesh, mlp_token_chunk=LONG_TOKEN_CHUNK)
        for length in args.eval_lengths:
            start, stop = mesh.token_block(length) if mesh else (0, length)
            src = GeneratedRecall(length, seed=0, sizes={"test": args.eval_samples}, vocab_size=vocab, variant=variant,
                                  positions=positions)
            reader = src.reader("test")
            sse = hits = 0.0
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(args.eval_samples):
                    b = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in reader.read([i], start, stop).items()}
                    pred, _ = model(b["x"], b["f"])
                    sse += (pred - b["y"]).square().sum().item()
                    hits += recall_hits(pred, b["x"], b["y"], mesh.sp_group if mesh else None).sum().item()
            ref = recall_references(length, variant, vocab, args.eval_samples)
            new.append({"model": label, "variant": variant, "positions": positions, "trained_at": top,
                        "n_tokens": length, "sp": sp,
                        "value_guess_accuracy": ref["value_guess_accuracy"], "value_mean_mse": ref["value_mean_mse"],
                        "samples": args.eval_samples, "mse": sse / (3 * args.eval_samples),
                        "accuracy": hits / args.eval_samples, "chance": 1 / vocab,
                        "seconds_per_sample": round((time.perf_counter() - t0) / args.eval_samples, 2),
                        "attention_cross_tensor_gib": round(length**2 * 3 * 4 / harness.GIB, 1)})
            if mesh is None or mesh.rank == 0:
                print(f"[accuracy] long {label} ({variant}) trained at {top}, eval at {length} (sp {sp}): accuracy "
                      f"{new[-1]['accuracy']:.3f}, MSE {new[-1]['mse']:.3f}", flush=True)
    fresh = {(r["model"], r["n_tokens"], r["sp"]) for r in new}
    kept = [r for r in payload.get("long", {}).get("rows", []) if (r.get("model"), r["n_tokens"], r.get("sp", 1))
            not in fresh]
    return {"settings": {"protocol": "trained at the model's length, evaluated at longer lengths on fresh test "
                                     "sequences (sp > 1: sequence-parallel ranks under torchrun)",
                         "model": "final checkpoint (model.pt), not the best-validation one"}, "rows": kept + new}


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("ablation", "nbody", "recall", "long") if p in payload]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4.2), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        if part == "ablation":
            t = payload["ablation"]["table"]
            ys = range(len(t))
            ax.barh(list(ys), [r["test_mse_mean"] for r in t], xerr=[r["test_mse_std"] for r in t], capsize=3)
            ax.set_yticks(list(ys), [r["variant"] for r in t], fontsize=7)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlabel("test MSE at best validation (mean ± std over seeds)")
            ax.set_title(f"5-body ablation ({payload['ablation']['settings']['steps']} steps)")
            continue
        if part == "nbody":
            t = payload["nbody"]["table"]
            xs = range(len(t))
            ax.bar([x - 0.2 for x in xs], [r["test_mse_mean"] for r in t], 0.4, yerr=[r["test_mse_std"] for r in t],
                   capsize=4, label=f"measured ({payload['nbody']['settings']['steps']} steps)")
            ax.bar([x + 0.2 for x in xs], [r["paper_mse"] or 0 for r in t], 0.4, label="published")
            ax.set_xticks(list(xs), [r["model"] for r in t])
            ax.set_yscale("log")
            ax.set_ylabel("test MSE at best validation")
            ax.set_title("5-body n-body")
        elif part == "recall":
            for r_mixer, style in (("hyena", "-"), ("attention", "--")):
                for variant, marker in (("random", "o"), ("fixed", "s")):
                    rs = sorted((r for r in payload["recall"]["runs"] if r["mixer"] == r_mixer
                                 and r["variant"] == variant), key=lambda r: r["n_tokens"])
                    if rs:
                        ax.plot([r["n_tokens"] for r in rs], [r["test_accuracy"] for r in rs], style, marker=marker,
                                label=f"{LABELS[r_mixer]}, {variant} vocab")
            ax.axhline(payload["recall"]["settings"]["chance_accuracy"], color="grey", lw=0.8, label="1 / vocab")
            refs = payload["recall"].get("references", [])
            if refs:
                ax.axhline(statistics.fmean(r["value_guess_accuracy"] for r in refs), color="grey", ls=":",
                           label="no retrieval: guess a value of the sequence")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length (tokens)")
            ax.set_ylabel("test accuracy at best validation")
            ax.set_title("associative recall")
        else:
            rows = payload["long"]["rows"]
            for label in dict.fromkeys(r.get("model", r["variant"]) for r in rows):  # one line per trained model
                rs = sorted((r for r in rows if r.get("model", r["variant"]) == label), key=lambda r: r["n_tokens"])
                marker = "o" if rs[0]["variant"] == "random" else "s"
                ax.plot([r["n_tokens"] for r in rs], [r["accuracy"] for r in rs], "-", marker=marker,
                        label=f"{label} ({rs[0]['variant']}, {rs[0].get('positions', 'index')}, trained at "
                              f"{rs[0]['trained_at']})")
            if rows:
                ax.axhline(rows[0]["chance"], color="grey", lw=0.8, label="1 / vocab")
                ax.axhline(statistics.fmean(r.get("value_guess_accuracy", 0) for r in rows), color="grey", ls=":",
                           label="no retrieval: guess a value of the sequence")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("evaluation length (tokens)")
            ax.set_ylabel("accuracy")
            ax.set_title("recall at long context (attention cannot run)")
        ax.legend(fontsize=7)
    harness.save_figure(fig, path, dpi=110)
    plt.close(fig)


def _mean_std(r: dict, key: str, digits: int) -> str:
    return f"{r[key + '_mean']:.{digits}f} ± {r[key + '_std']:.{digits}f}"


def ablation_table(payload: dict) -> str:
    return markdown_table(
        ["change (one at a time)", "test MSE at best val (mean ± std)", "seeds", "last train loss", "wall per run (s)"],
        [[r["change"], _mean_std(r, "test_mse", 4), len(r["seeds"]), f"{r['train_loss_last']:.4f}",
          f"{r['wall_s_mean']:.0f}"] for r in payload["ablation"]["table"]])


def nbody_runs_table(payload: dict) -> str:
    return markdown_table(
        ["model (launch/train.py runs)", "test MSE at best val (mean ± std)", "per seed", "steps", "best steps"],
        [[r["label"], _mean_std(r, "test_mse", 4), ", ".join(f"{x['test_mse']:.4f}" for x in r["runs"]),
          r["runs"][0]["steps"], ", ".join(str(x["best_step"]) for x in r["runs"])]
         for r in payload["nbody_runs"]["rows"]])


def nbody_table(payload: dict, key: str) -> str:
    nb, rows = payload[key], []
    for r in nb["table"]:
        rs = [x for x in nb["runs"] if x["mixer"] == r["mixer"]]
        rows.append([r["model"], _mean_std(r, "test_mse", 4), rs[0]["steps"], r["paper_mse"] or "—",
                     ", ".join(f"{x['test_mse']:.4f}" for x in rs), f"{r['wall_s_mean']:.0f}"])
    return markdown_table(["model", f"test MSE at best val (mean ± std, {len(nb['settings']['seeds'])} seeds)",
                           "steps", "published", "per-seed", "wall per run (s)"], rows)


def recall_runs_table(payload: dict) -> str:
    rows = []
    for r in payload["recall_runs"]["rows"]:
        ref, lengths = r["reference"], r.get("train_lengths")
        length = f"{min(lengths)}–{max(lengths)}, tested at {r['n_tokens']}" if lengths else r["n_tokens"]
        rows.append([r["label"], length, r["variant"], r["positions"], _mean_std(r, "test_accuracy", 3),
                     ", ".join(f"{x['test_accuracy']:.3f}" for x in r["runs"]), f"{r['test_mse_mean']:.3f}",
                     f"{r['runs'][0]['steps']} × {r['runs'][0]['batch_size']}",
                     f"{ref['value_guess_accuracy']:.3f} / {ref['value_mean_mse']:.3f}"])
    return markdown_table(["model (launch/train.py runs)", "length", "vocabulary", "positions",
                           "test accuracy (mean ± std)", "per seed", "test MSE", "steps × batch",
                           "no-retrieval guess / mean MSE"], rows)


def recall_table(payload: dict) -> str:
    rows = [[r["n_tokens"], r["variant"], LABELS[r["mixer"]], f"{r['steps']} × {r['batch_size']}",
             f"{r['test_accuracy']:.3f}", f"{r['test_mse']:.3f}", r["best"]["step"], f"{r['wall_s']:.0f}"]
            for r in payload["recall"]["runs"]]
    rows += [[r["n_tokens"], r["variant"], "no retrieval: guess a value of the sequence / predict their mean",
              "—", f"{r['value_guess_accuracy']:.3f}", f"{r['value_mean_mse']:.3f}", "—", "—"]
             for r in payload["recall"].get("references", [])]
    return markdown_table(["length", "vocabulary", "model", "steps × batch", "test accuracy", "test MSE",
                           "best step", "wall (s)"], rows)


def long_table(payload: dict, first: bool = False) -> str:
    """Every long-context evaluation; ``first``: only the first protocol's (the rows with no model name, section 6),
    without the model, positions and sp columns."""
    cells = [{"model": r.get("model", ""), "vocabulary": r["variant"], "positions": r.get("positions", "index"),
              "trained at": r["trained_at"], "evaluated at": r["n_tokens"], "sp": r.get("sp", 1),
              "samples": r["samples"], "accuracy": f"{r['accuracy']:.3f}",
              "no-retrieval guess": f"{r['value_guess_accuracy']:.3f}", "1/vocab": f"{r['chance']:.2f}",
              "MSE": f"{r['mse']:.3f}", "value-mean MSE": f"{r['value_mean_mse']:.3f}",
              "s / sample": r["seconds_per_sample"]} for r in payload["long"]["rows"] if not (first and "model" in r)]
    header = [k for k in cells[0] if not (first and k in ("model", "positions", "sp"))]
    return markdown_table(header, [[c[k] for k in header] for c in cells])


def markdown(payload: dict) -> str:
    """The README's tables from the results (benchmarks/tables.py renders each into its place)."""
    parts = []
    if "ablation" in payload:
        st = payload["ablation"]["settings"]
        parts += [f"ablation: {st['steps']} steps, lr {st['lr']} {st['schedule']}, batch 100", "",
                  ablation_table(payload), ""]
    if "nbody_runs" in payload:
        parts += [nbody_runs_table(payload), ""]
    for key in (k for k in payload if k.startswith("nbody") and k != "nbody_runs"):
        nb = payload[key]
        parts += [f"`{key}`: lr {nb['settings']['lr']}, {nb['settings']['schedule']}, batch 100", "",
                  nbody_table(payload, key), ""]
    if "recall_runs" in payload:
        parts += [recall_runs_table(payload), ""]
    if "recall" in payload:
        parts += [recall_table(payload), ""]
    if "long" in payload:
        parts.append(long_table(payload))
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["nbody", "ablation", "collect", "recall", "long", "all"], default="all")
    ap.add_argument("--run-dirs", type=Path, nargs="+", default=[], help="collect: launch/train.py run folders")
    ap.add_argument("--label", default="", help="collect: the model these runs train (a row of the table)")
    ap.add_argument("--command", default="", help="collect: the command that trained them (recorded)")
    ap.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    ap.add_argument("--tables", action="store_true", help="only print the README tables of <out>/accuracy.json")
    ap.add_argument("--quick", action="store_true", help="a smoke run of every part (seconds, meaningless numbers)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    ap.add_argument("--work", type=Path, default=None, help="runs and data (default: runs/accuracy, quick: <out>)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: nbody 600, recall 150)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mixers", nargs="+", default=["hyena", "local", "attention", "egnn", "linear"],
                    choices=list(LABELS))
    ap.add_argument("--nbody-lr", type=float, default=3e-3)
    ap.add_argument("--nbody-schedule", choices=["cosine", "constant"], default="cosine")
    ap.add_argument("--nbody-key", default="nbody", help="the results key of this n-body table (e.g. a second "
                    "table at another budget)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--variants", nargs="+", default=["random", "fixed"], choices=["random", "fixed"])
    ap.add_argument("--vocab", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=16, help="recall equivariant width (the paper: 128)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-size", type=int, default=96, help="recall validation and test sequences")
    ap.add_argument("--recall-lr", type=float, default=3e-3)
    ap.add_argument("--eval-lengths", type=int, nargs="+", default=[256, 4096, 65536])
    ap.add_argument("--eval-samples", type=int, default=16)
    args = ap.parse_args()
    harness.set_threads(1)
    out = args.out = args.out or harness.RESULTS
    if args.quick:
        args.seeds, args.lengths, args.eval_lengths, args.eval_samples = [0], [16], [16, 64], 2
        args.mixers = [m for m in args.mixers if m != "attention"]  # the attention's own tests cover it
        args.batch, args.hidden = 8, 4
    work = args.work or (out / "accuracy_work" if args.quick else harness.ROOT / "runs" / "accuracy")
    path = out / "accuracy.json"
    payload = envelope.sections(envelope.read(path)) if path.exists() else {}
    if args.tables:
        print(markdown(payload))
        return
    payload.update({"benchmark": "accuracy", "machine": harness.machine()})
    parts = ["nbody", "recall", "long"] if args.part == "all" else [args.part]
    written = []  # the sections the parts run so far wrote: checked before each save
    for part in parts:
        steps = args.steps
        if part == "nbody":
            args.steps = steps or (10 if args.quick else 600)
            key, payload[args.nbody_key] = args.nbody_key, run_nbody(args, work)
        elif part == "ablation":
            args.steps = steps or (10 if args.quick else 500)
            key, payload["ablation"] = "ablation", run_ablation(args, work, payload)
        elif part == "collect":
            key, payload[key] = collect_runs(args, payload)
        elif part == "recall":
            args.steps = steps or (3 if args.quick else 150)
            key, payload["recall"] = "recall", run_recall(args, work, payload.get("recall"))
        else:
            key, payload["long"] = "long", run_long(args, work, payload)
        written.append(key)
        args.steps = steps
        if "recall" in payload:  # the no-retrieval references of every (length, vocabulary) trained
            firsts = {(r["n_tokens"], r["variant"]): r for r in reversed(payload["recall"]["runs"])}
            payload["recall"]["references"] = [recall_references(n, v, args.vocab, r["splits"]["test"])
                                               for (n, v), r in sorted(firsts.items())]
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun (--part long, sp > 1) rank 0 writes
            # after every part: a stopped session keeps what it measured
            harness.save("accuracy", payload, out, required=tuple(written),
                         config=harness.settings(args))
    if int(os.environ.get("RANK", "0")) == 0:
        plot(payload, out / "accuracy.png")
        print(markdown(payload))


if __name__ == "__main__":
    main()
