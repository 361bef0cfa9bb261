"""Can the model express what is predictable on the solvated protein? A one-process training loop on its store.

    python benchmarks/md_local_rule.py --target oracle --name md_local_rule_recipe   # the config's model
    python benchmarks/md_local_rule.py --target oracle --name md_local_rule_before model.local_cutoff=null \\
        model.positions_in_stream=true model.linear_path=false model.zero_update=true   # the model before the recipe
    python benchmarks/md_local_rule.py --target next                        # the real next-frame targets

Over 100 ps a water molecule turns over completely, so the best guess for each of its atoms is the molecule's
centre of mass at t (the oracle; the rest of the system static). ``--target oracle`` trains on those guesses
instead of the next frame: a task with no noise at all, so how fast the model approaches the oracle's gain shows
whether it can express the rule. Every evaluation reports train / val / test MSE against the real next frame,
relative to the static reference (%), averaged over each split's samples, and the oracle's own figure.
The model and optimiser are `md_adk_solvated.yaml`'s (overrides as in the trainer: section.key=value); one
sample per step, in order, as the trainer's batch 1; the store is read with the trainer's loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from dist_hyena.data import StreamingLoader  # noqa: E402
from dist_hyena.model import SE3HyenaModel  # noqa: E402
from dist_hyena.train.config import load_config  # noqa: E402
from dist_hyena.train.engine import lr_factor  # noqa: E402

WATER = (15.9994, 1.008, 1.008, 0.0)  # TIP4P: O, H, H and the massless charge site, consecutive in the topology


def water_molecules(masses: np.ndarray) -> np.ndarray:
    """[molecules, 4] token indices of every (O, H, H, M) quadruple of consecutive atoms."""
    m = masses
    starts = np.where(np.all([np.abs(m[k : len(m) - 3 + k] - w) < 0.01 for k, w in enumerate(WATER)], axis=0))[0]
    return starts[:, None] + np.arange(4)


def oracle(x: torch.Tensor, masses: torch.Tensor, water: torch.Tensor) -> torch.Tensor:
    """x [B, N, C, 3] -> [B, N, 1, 3]: every water atom at its molecule's centre of mass, the rest where it is."""
    p = x[:, :, 0].double().clone()
    w = masses.double()[water]  # [M, 4]
    centre = (p[:, water] * w[None, :, :, None]).sum(2) / w.sum(1)[None, :, None]
    p[:, water] = centre[:, :, None]
    return p.to(x.dtype)[:, :, None]


def relative(sse: float, static: float) -> float:
    return 100.0 * (sse - static) / static


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    ap.add_argument("--config", default="md_adk_solvated")
    ap.add_argument("--target", choices=("oracle", "next"), default="oracle")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--name", help="save the evaluations as benchmarks/results/NAME.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg.run.seed)
    loaders = {s: StreamingLoader(cfg.data.path, s, 1) for s in ("train", "val", "test")}
    data = {s: [(b["x"], b["f"], b["y"]) for b in loader] for s, loader in loaders.items()}
    x0, f0, _ = data["train"][0]
    model_cfg = dataclasses.replace(cfg.model, vector_in=x0.shape[2], scalar_in=f0.shape[2])
    model = SE3HyenaModel(model_cfg)
    masses_at = loaders["train"].reader.meta["scalars"].index("masses")
    masses = f0[0, :, masses_at]
    water = torch.as_tensor(water_molecules(masses.numpy()))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.optim, args.steps))

    def evaluate() -> dict:
        out = {}
        with torch.no_grad():
            for split, batches in data.items():
                model_rel, oracle_rel = [], []
                for x, f, y in batches:
                    static = (x[:, :, :1] - y).square().sum().item()
                    model_rel.append(relative((model(x, f)[0] - y).square().sum().item(), static))
                    oracle_rel.append(relative((oracle(x, masses, water) - y).square().sum().item(), static))
                out[split], out[f"{split}_oracle"] = float(np.mean(model_rel)), float(np.mean(oracle_rel))
        return out

    log, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        x, f, y = data["train"][(step - 1) % len(data["train"])]
        target = oracle(x, masses, water) if args.target == "oracle" else y
        opt.zero_grad()
        (model(x, f)[0] - target).square().mean().backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            log.append({"step": step, **evaluate(), "seconds": time.perf_counter() - start})
            print(json.dumps({k: round(v, 4) for k, v in log[-1].items()}), flush=True)
    if args.name:
        harness.save(args.name, {"benchmark": "md_local_rule", "config": harness.settings(args), "evals": log})


def rule_table(*payloads: dict) -> str:
    """Each run's last evaluation: the model against the real next frame, relative to static (benchmarks/tables)."""
    from benchmarks.tables import markdown_table

    rows = []
    for p in payloads:
        cfg, last = p["config"], p["evals"][-1]
        rows.append([" ".join(cfg["overrides"]) or "the config's", cfg["target"], last["step"],
                     *(f"{last[s]:+.3f}%" for s in ("train", "val", "test")), f"{last['test_oracle']:+.3f}%"])
    return markdown_table(["model (overrides of md_adk_solvated)", "trained on", "steps", "train", "val", "test",
                           "oracle: test"], rows)


if __name__ == "__main__":
    main()
