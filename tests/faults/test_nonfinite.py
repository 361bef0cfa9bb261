"""Non-finite loss or parameters never pass silently (`train.nonfinite`), on two gloo ranks.

The fault is real: a learning rate so large that the first update blows the model up, so the
next forward pass returns inf/NaN.
"""

import math
import re

import pytest
import torch

from dist_hyena.train.config import load_config
from dist_hyena.train.metrics import read_metrics
from tests.helpers.distributed import run_ranks
from tests.helpers.training import small_run_overrides

BLOW_UP = ["optim.lr=1.0e30", "optim.warmup_steps=0", "optim.schedule=constant"]


def _runs(rank, world, tmp_path):
    from dist_hyena.train import train
    from dist_hyena.train.guards import NonFiniteError

    base = small_run_overrides(tmp_path, "x") + ["train.steps=4", "checkpoint.every=1"]
    out = {}
    for name, extra in {"stop": BLOW_UP, "skip": BLOW_UP + ["train.nonfinite=skip"]}.items():
        try:
            out[name] = train(load_config(None, base + extra + [f"run.name={name}"]))
        except NonFiniteError as e:
            out[name] = str(e)
    return out


@pytest.mark.timeout(400)
def test_nonfinite_loss_stops_or_skips_and_parameters_stay_finite(tmp_path):
    results = run_ranks(_runs, world=2, args=(tmp_path,), timeout=360)
    runs = tmp_path / "runs"
    for rank, out in enumerate(results):
        # stop: names the step and every rank's samples; the last checkpoint is the step before.
        assert isinstance(out["stop"], str), f"rank {rank}: {out['stop']}"
        assert re.search(r"step 2: non-finite loss \(rank 0: train samples \[[\d, ]+\]; rank 1: train samples "
                         r"\[[\d, ]+\]\); stopping \(train\.nonfinite = stop\)", out["stop"]), out["stop"]
        # skip: the run ends, every step after the blow-up skipped and logged as such.
        assert out["skip"]["steps"] == 4 and math.isfinite(out["skip"]["last_loss"])
    assert (runs / "stop" / "checkpoints" / "latest").read_text() == "step_00000001"
    records = read_metrics(runs / "skip" / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("skipped_nonfinite") == 1] == [2, 3, 4]
    params = torch.load(runs / "skip" / "model.pt")["state_dict"]
    assert all(torch.isfinite(p).all() for p in params.values())
