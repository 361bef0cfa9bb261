"""End to end through the real `deepspeed` launcher, 2 ranks (sp = 2): a job that stops after
a few steps with a checkpoint, a second job that resumes from it, falling loss, the
observability files, and the exported model loaded without DeepSpeed."""

import json
import subprocess
import sys

import pytest
import torch

from dist_hyena.data import StreamingLoader
from dist_hyena.train.export import load_exported
from tests.helpers.launch import REPO_ROOT, free_port, launch_env, run_launcher
from tests.helpers.training import small_run_overrides

TRAIN = str(REPO_ROOT / "launch" / "train.py")


def _deepspeed(*args: str) -> str:
    return run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN, *args],
                        timeout=300)


@pytest.mark.timeout(660)
def test_deepspeed_two_ranks_trains_checkpoints_resumes_exports(tmp_path):
    run = small_run_overrides(tmp_path, "e2e") + ["parallel.sp=2", "train.steps=8", "optim.schedule=constant",
                                                  "eval.every=2"]
    run_dir = tmp_path / "runs" / "e2e"
    _deepspeed(*run, "train.stop_at=4")
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000004"

    out = _deepspeed("--resume", *run)
    assert "resumed from step_00000004" in out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < 0.7 * losses[1], f"loss did not fall: {losses}"
    assert [r["step"] for r in records if "val_mse" in r] == [2, 4, 6, 8]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["start_step"] == 4 and summary["steps"] == 8
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    assert any((run_dir / "tensorboard").iterdir())

    # The exported fp32 weights, in one process without DeepSpeed, reproduce the final
    # validation MSE that the two sequence-parallel ranks computed on the same first batch
    # (each validation of a job restarts the split, so the second one of the job did too).
    model = load_exported(run_dir / "model.pt")
    batch = next(iter(StreamingLoader(tmp_path / "manybody8", "val", 4, shuffle=False)))
    with torch.no_grad():
        pred, _ = model(batch["x"], batch["f"])
    mse = (pred - batch["y"]).square().mean().item()
    assert mse == pytest.approx(summary["val_mse"], rel=1e-5)

    # Any other complete checkpoint exports from the command line.
    out = tmp_path / "step4.pt"
    subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "export.py"), str(run_dir), "--tag", "step_00000004",
                    "--out", str(out)], check=True, env=launch_env(), capture_output=True)
    early = load_exported(out).state_dict()
    assert early.keys() == model.state_dict().keys()
    assert any(not torch.equal(early[k], v) for k, v in model.state_dict().items())
