"""Resume is exact: 2k steps straight == k steps, stop, resume, k more (bitwise on CPU).

Two gloo ranks (dp = 2), ZeRO 2, Adam with a warmup + cosine schedule, gradient
accumulation, and an epoch boundary crossed after the resume point: everything a
checkpoint must carry (optimizer moments, schedule, loader position, RNG) shows up here.
"""

import json

import pytest
import torch

from dist_hyena.train.config import load_config
from tests.helpers.distributed import run_ranks
from tests.helpers.training import small_run_overrides

K = 3


def _straight_and_resumed(rank, world, tmp_path):
    from dist_hyena.train import train

    base = small_run_overrides(tmp_path, "x") + [f"train.steps={2 * K}", "train.grad_accum=2",
                                                 "train.deepspeed=deepspeed/zero2.json"]
    straight = train(load_config(None, base + ["run.name=straight"]))
    train(load_config(None, base + ["run.name=resumed", f"train.stop_at={K}"]))
    resumed = train(load_config(None, base + ["run.name=resumed"]), resume=True)
    return straight, resumed


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.timeout(400)
def test_resume_continues_bitwise(tmp_path):
    straight, resumed = run_ranks(_straight_and_resumed, world=2, args=(tmp_path,), timeout=360)[0]
    assert resumed["start_step"] == K and straight["start_step"] == 0
    runs = tmp_path / "runs"
    a, b = _losses(runs / "straight"), _losses(runs / "resumed")
    assert sorted(a) == sorted(b) == list(range(1, 2 * K + 1))
    assert [a[s] for s in a] == [b[s] for s in a], "loss sequences differ after resuming"
    assert a[2 * K] != a[K]  # the steps after the resume point did train
    records = [json.loads(line) for line in (runs / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in records if "tokens" in r] == [8 * 8] * 2 * K  # batch 8 x 8 bodies, every step
    pa = torch.load(runs / "straight" / "model.pt")["state_dict"]
    pb = torch.load(runs / "resumed" / "model.pt")["state_dict"]
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), f"parameter {name} differs after resuming"
    root = runs / "resumed" / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == [f"step_{K:08d}", f"step_{2 * K:08d}"]
    assert (root / "latest").read_text() == f"step_{2 * K:08d}"
