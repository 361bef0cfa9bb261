"""Resume on another layout (docs/design.md §5), through real DeepSpeed engines on real gloo ranks.

Straight runs at dp = 2 (ZeRO 0-3) write checkpoints every K steps. Copies of their step-K checkpoints are
resumed at dp = 1, at dp = 1 x sp = 2 and at another ZeRO stage; a dp = 1 job's checkpoint is resumed at dp = 2
again. Each resumed job must hold, right after loading, the parameters that were saved (bitwise), and continue
with the straight run's losses (the same global batches: float32 round-off of another reduction order) and, for
the 2 -> 1 -> 2 sequence of jobs, the straight run's sample ids at every step. Execution settings may change at a
resume; the architecture may not, and neither may the ZeRO stage cross between 0, 1-2 and 3.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dist_hyena.train.config import load_config
from tests.helpers.distributed import run_ranks
from tests.helpers.training import small_run_overrides

K = 3
STAGES = (0, 1, 2, 3)


def _cfg(tmp_path, name: str, stage: int, *more: str):
    return load_config(None, small_run_overrides(tmp_path, name) + [
        f"train.steps={3 * K}", f"checkpoint.every={K}", "checkpoint.keep=0", "log.sample_ids=true",
        f"train.deepspeed=deepspeed/zero{stage}.json", *more])


def _copy(tmp_path, src: str, step: int, dst: str) -> None:
    """Run `dst` as `src` was after `step`: its checkpoint of that step and its logs (rank 0; collective)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        runs = tmp_path / "runs"
        tag = f"step_{step:08d}"
        shutil.copytree(runs / src / "checkpoints" / tag, runs / dst / "checkpoints" / tag)
        for log in ("metrics.jsonl", "samples.jsonl"):
            shutil.copy(runs / src / log, runs / dst / log)
    if dist.is_initialized():
        dist.barrier()


def _loaded_parameters(cfg) -> dict:
    """The full parameters of a resumed run's engine right after it loaded its checkpoint (collective)."""
    from deepspeed import zero

    from dist_hyena.train.trainer import setup

    run = setup(cfg, resume=True)
    params = list(run.engine.module.parameters())
    with zero.GatheredParameters(params, enabled=run.layout["zero_stage"] == 3):
        got = {n: p.detach().clone() for n, p in run.engine.module.named_parameters()}
    run.log.close()
    run.engine.destroy()
    return got


def _resumed(tmp_path, src: str, dst: str, stage: int, *more: str, step: int = K) -> tuple[dict, dict]:
    """-> (parameters right after loading, the summary of the job that continues to 2K)."""
    _copy(tmp_path, src, step, dst)
    cfg = _cfg(tmp_path, dst, stage, f"train.stop_at={2 * K}", *more)
    from dist_hyena.train import train

    return _loaded_parameters(cfg), train(cfg, resume=True)


def _first_jobs(rank, world, tmp_path):
    """dp = 2: the straight runs, then their step-K checkpoints resumed at dp = 1 x sp = 2."""
    from dist_hyena.train import train

    for stage in STAGES:
        train(_cfg(tmp_path, f"straight{stage}", stage))
    return {stage: _resumed(tmp_path, f"straight{stage}", f"sp2_zero{stage}", stage, "parallel.sp=2")
            for stage in STAGES[1:]}


def _refused(cfg) -> str:
    from dist_hyena.train import train
    from dist_hyena.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError) as info:
        train(cfg, resume=True)
    return str(info.value)


def _one_rank_jobs(rank, world, tmp_path):
    """dp = 1: every stage's step-K checkpoint; another ZeRO stage; execution settings changed; refusals."""
    out = {stage: _resumed(tmp_path, f"straight{stage}", f"dp1_zero{stage}", stage) for stage in STAGES}
    out["zero1_to_2"] = _resumed(tmp_path, "straight1", "dp1_zero1_to_2", 2)
    out["execution"] = _resumed(tmp_path, "straight1", "execution", 1, "model.activation_checkpointing=true",
                                "model.mlp_token_chunk=4", "model.sp_strategy=fft")
    _copy(tmp_path, "straight1", K, "wider")
    out["wider"] = _refused(_cfg(tmp_path, "wider", 1, "model.hidden_width=16"))
    _copy(tmp_path, "straight0", K, "zero0_to_1")
    out["zero0_to_1"] = _refused(_cfg(tmp_path, "zero0_to_1", 1))
    _copy(tmp_path, "straight2", K, "zero2_to_3")
    out["zero2_to_3"] = _refused(_cfg(tmp_path, "zero2_to_3", 3))
    return out


def _last_job(rank, world, tmp_path):
    """dp = 2 again: the dp = 1 job's step-2K checkpoint of the 2 -> 1 -> 2 sequence, to the end."""
    from dist_hyena.train import train

    _copy(tmp_path, "dp1_zero1", 2 * K, "dp2_dp1_dp2")
    cfg = _cfg(tmp_path, "dp2_dp1_dp2", 1)
    return _loaded_parameters(cfg), train(cfg, resume=True)


def _records(run_dir: Path, name: str, key: str) -> dict[int, object]:
    lines = (run_dir / name).read_text().splitlines()
    return {r["step"]: r[key] for r in map(json.loads, lines) if key in r}


def _saved_parameters(run_dir: Path, stage: int, step: int = K) -> dict:
    """The fp32 parameters a run saved at `step`, consolidated by DeepSpeed from its shards."""
    tag = f"step_{step:08d}"
    if stage == 0:
        return torch.load(run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag)


def _assert_continues(runs: Path, straight: str, resumed: str, steps: range) -> None:
    a, b = _records(runs / straight, "metrics.jsonl", "loss"), _records(runs / resumed, "metrics.jsonl", "loss")
    assert a[K + 1] < a[1], "the straight run did not train: the comparison would be vacuous"
    for step in steps:
        assert abs(b[step] - a[step]) <= 1e-5 * abs(a[step]), \
            f"{resumed} step {step}: loss {b[step]} where the uninterrupted {straight} had {a[step]}"


def _assert_loaded_as_saved(got: dict, saved: dict, case: str) -> None:
    assert got.keys() == saved.keys(), case
    for name, value in saved.items():
        assert torch.equal(got[name], value.float()), f"{case}: parameter {name} is not the saved one after loading"


@pytest.mark.timeout(900)
def test_resume_on_another_layout(tmp_path):
    runs = tmp_path / "runs"
    sp2 = run_ranks(_first_jobs, world=2, args=(tmp_path,), timeout=500)[0]
    one = run_ranks(_one_rank_jobs, world=1, args=(tmp_path,), timeout=500)[0]
    last_loaded, last = run_ranks(_last_job, world=2, args=(tmp_path,), timeout=300)[0]

    for stage in STAGES:
        saved = _saved_parameters(runs / f"straight{stage}", stage)
        cases = [(f"dp1_zero{stage}", one[stage])] + ([(f"sp2_zero{stage}", sp2[stage])] if stage else [])
        for name, (loaded, summary) in cases:
            assert summary["start_step"] == K and summary["steps"] == 2 * K, name
            _assert_loaded_as_saved(loaded, saved, name)
            _assert_continues(runs, f"straight{stage}", name, range(K + 1, 2 * K + 1))
    _assert_loaded_as_saved(one["zero1_to_2"][0], _saved_parameters(runs / "straight1", 1), "ZeRO-1 -> ZeRO-2")
    _assert_continues(runs, "straight1", "dp1_zero1_to_2", range(K + 1, 2 * K + 1))
    _assert_continues(runs, "straight1", "execution", range(K + 1, 2 * K + 1))

    assert last["start_step"] == 2 * K and last["steps"] == 3 * K
    _assert_loaded_as_saved(last_loaded, _saved_parameters(runs / "dp1_zero1", 1, 2 * K), "dp 1 -> dp 2")
    _assert_continues(runs, "straight1", "dp2_dp1_dp2", range(2 * K + 1, 3 * K + 1))
    want = _records(runs / "straight1", "samples.jsonl", "sample_ids")
    got = _records(runs / "dp2_dp1_dp2", "samples.jsonl", "sample_ids")
    assert sorted(want) == list(range(1, 3 * K + 1)) and got == want, "dp 2 -> 1 -> 2 saw other samples"
    assert len({i for ids in want.values() for i in ids[0]}) > 8  # the steps did read different samples

    assert "model.hidden_width: saved 8, this run 16" in one["wider"]
    assert "ZeRO-0" in one["zero0_to_1"] and "train.deepspeed at ZeRO stage 0" in one["zero0_to_1"]
    assert "between ZeRO-1/2 and ZeRO-3" in one["zero2_to_3"] and "ZeRO stage 2" in one["zero2_to_3"]
