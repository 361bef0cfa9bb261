"""Gradient parity through the real DeepSpeed engine.

One SGD step on a dp × sp mesh must give the parameters of one process taking the same
step on the whole global batch. SGD, not Adam: Adam's first step is about lr·sign(g) and
would hide a gradient off by a factor of sp or dp. Each spawned group is reused for every
ZeRO stage and mesh it can hold (DeepSpeed's import and start-up dominate the time).
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dist_hyena import HyenaConfig, SE3HyenaModel
from dist_hyena.train.config import load_config
from tests.helpers.distributed import run_ranks
from tests.helpers.equivariance import relative_error

N_TOKENS, BATCH, LR, SEED = 8, 4, 0.5, 3
MODELS = {
    "nbody": HyenaConfig(head="nbody", vector_in=2, scalar_in=1, hidden_width=8),
    "recall": HyenaConfig(head="recall", vector_in=1, scalar_in=16, position_channels=(), hidden_width=8),
}


def _global_batch(task: str) -> dict:
    """[BATCH, N_TOKENS, ...] inputs and targets of the whole global batch."""
    g = torch.Generator().manual_seed(7)
    cfg = MODELS[task]
    x = torch.randn(BATCH, N_TOKENS, cfg.vector_in, 3, generator=g)
    f = torch.randn(BATCH, N_TOKENS, cfg.scalar_in, generator=g)
    y = torch.randn(BATCH, N_TOKENS, 1, 3, generator=g) if task == "nbody" else torch.randn(BATCH, 1, 3, generator=g)
    return {"x": x, "f": f, "y": y}


def _run_config(stage: int, sp: int, ds_dir: str):
    """The shipped ZeRO config of ``stage`` with gradient clipping off (DeepSpeed clips at norm 1 unless told):
    the single-process reference step does not clip."""
    ds = load_config(None, [f"train.deepspeed=deepspeed/zero{stage}.json"]).train.deepspeed
    Path(ds_dir).mkdir(parents=True, exist_ok=True)
    path = Path(ds_dir) / f"zero{stage}_noclip.json"
    config = {**json.loads(Path(ds).read_text()), "gradient_clipping": 0.0}
    if stage == 3:  # partition every parameter (by default ZeRO-3 keeps parameters under 1e5 elements whole)
        config["zero_optimization"] = {**config["zero_optimization"], "stage3_param_persistence_threshold": 0}
    path.write_text(json.dumps(config))
    return load_config(None, [f"run.seed={SEED}", "optim.name=sgd", f"optim.lr={LR}", "optim.weight_decay=0.0",
                              "optim.schedule=constant", "optim.warmup_steps=0", f"parallel.sp={sp}",
                              f"train.batch_size={BATCH}", f"train.deepspeed={path}"])


def _one_step_distributed(rank, world, cases, ds_dir):
    """Every case: (task, sp, stage) -> this rank's full parameters after one engine step."""
    from deepspeed import zero

    from dist_hyena.parallel import init_mesh
    from dist_hyena.tasks import TASKS
    from dist_hyena.train.engine import batch_error, build_engine

    out = {}
    for task, sp, stage in cases:
        mesh = init_mesh(sp=sp)
        engine, _ = build_engine(_run_config(stage, sp, f"{ds_dir}/rank{rank}"), MODELS[task], mesh)
        full = _global_batch(task)
        b = BATCH // mesh.dp
        start, stop = mesh.token_block(N_TOKENS)
        mine = {k: v[mesh.dp_rank * b:(mesh.dp_rank + 1) * b] for k, v in full.items()}
        for k in ("x", "f", "y") if task == "nbody" else ("x", "f"):  # recall: one target per sample
            mine[k] = mine[k][:, start:stop]
        sse, _, group_count = batch_error(engine, mine, TASKS[task], N_TOKENS, mesh.sp)
        engine.backward(sse / group_count)
        engine.step()
        params = list(engine.module.parameters())
        with zero.GatheredParameters(params, enabled=stage == 3):
            out[(task, sp, stage)] = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        engine.destroy()
        dist.barrier()
    return out


def _one_step_single(task: str) -> dict:
    torch.manual_seed(SEED)
    model = SE3HyenaModel(dataclasses.replace(MODELS[task]))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batch = _global_batch(task)
    pred, _ = model(batch["x"], batch["f"])
    torch.nn.functional.mse_loss(pred, batch["y"]).backward()
    opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_parity(got: dict, ref: dict, case, initial: dict):
    assert got.keys() == ref.keys()
    moved = max((ref[n] - initial[n]).abs().max().item() for n in ref)
    assert moved > 1e-3, "the reference step barely moved the parameters: the check would be vacuous"
    for name in ref:
        err = relative_error(got[name], ref[name])
        assert err <= 1e-5, f"{case}: parameter {name} differs from one process by {err:.3g} (relative)"


def _initial(task: str) -> dict:
    torch.manual_seed(SEED)
    return {n: p.detach().clone() for n, p in SE3HyenaModel(MODELS[task]).named_parameters()}


@pytest.mark.timeout(400)
def test_one_step_matches_one_process_dp2_sp2(tmp_path):
    """world 2: dp = 2 and sp = 2, ZeRO 1, 2, 3."""
    cases = [("nbody", sp, stage) for sp in (1, 2) for stage in (1, 2, 3)]
    results = run_ranks(_one_step_distributed, world=2, args=(cases, str(tmp_path)), timeout=360)
    ref, initial = _one_step_single("nbody"), _initial("nbody")
    for case in cases:
        for rank_result in results:
            _assert_parity(rank_result[case], ref, case, initial)


@pytest.mark.timeout(400)
def test_one_step_matches_one_process_dp2_x_sp2(tmp_path):
    """world 4 = dp 2 × sp 2, ZeRO 1, 2, 3; and the recall head, whose pooled output is shared by sp ranks."""
    cases = [("nbody", 2, stage) for stage in (1, 2, 3)] + [("recall", 2, 1)]
    results = run_ranks(_one_step_distributed, world=4, args=(cases, str(tmp_path)), timeout=360)
    refs = {task: (_one_step_single(task), _initial(task)) for task in MODELS}
    for case in cases:
        ref, initial = refs[case[0]]
        for rank_result in results:
            _assert_parity(rank_result[case], ref, case, initial)
