"""The bad-input table: each kind of bad input, given to the user-facing entry points, fails
with a message naming the culprit (file, key, value, array or chunk).

Config mistakes go to `load_config` (what `launch/train.py` calls first). Everything that
needs a process group goes through `train()` on two real gloo ranks, all cases in one
spawned group (DeepSpeed's start-up dominates). A hostfile goes to the `deepspeed` launcher.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import zarr

from dist_hyena.data import generate_store
from dist_hyena.train.config import ConfigError, load_config
from tests.helpers.distributed import run_ranks
from tests.helpers.launch import PROBE, launch_env
from tests.helpers.training import small_run_overrides

# The store small_run_overrides names, made here with the same settings (the trainer finds it complete).
STORE = dict(seed=0, n_bodies=8, train=32, val=8, test=8)

CONFIG_CASES = {
    "unknown config key": (["optim.lrr=0.1"], r"unknown key\(s\) optim\.lrr; known: \[.*'lr'"),
    "mistyped config value": (["train.steps=ten"], r"train\.steps = 'ten' is not a valid int"),
    "value outside a choice": (["train.nonfinite=ignore"], r"train\.nonfinite = 'ignore' must be one of"),
}

# kind -> (overrides after the shared ones, expected message). `{store}` is the broken copy of each case.
TRAIN_CASES = {
    "sp does not divide the world size": (["parallel.sp=3"], r"parallel\.sp = 3 does not divide the world size 2"),
    "N % sp != 0 under fft": (["parallel.sp=2", "model.sp_strategy=fft"],
                              r"sp_strategy 'fft' needs the sequence length divisible by sp: N=9 tokens, sp=2"),
    "store of the wrong schema version": ([], r"{store}: schema_version 0, this code reads 1"),
    "missing array": ([], r"{store}: array train/charges is missing"),
    "shape mismatch": ([], r"{store}: array train/charges has shape \(32, 7\), metadata says \(32, 8\)"),
    "dtype mismatch": ([], r"{store}: array train/charges has dtype float64, expected float32"),
    "corrupted chunk": ([], r"chunk train/positions/c/\d+/\d/0/0 is corrupt"),
    "NaN/Inf in data": ([], r"chunk train/velocities/c/\d+/0/0/0 is corrupt or holds NaN/Inf"),
    "split smaller than one batch": (["train.batch_size=64"],
                                     r"{store}: the train split has 32 samples, fewer than one batch of 32"),
    "no store and no preset": ([], r"no dataset store at {store}\. Create it with: python datasets/nbody\.py"),
    "checkpoint of a different model": (["model.hidden_width=12"],
                                        r"checkpoint .*step_00000001 was saved by a different model .*"
                                        r"model.hidden_width: saved 8, this run 12"),
    "DeepSpeed config DeepSpeed rejects": ([], r"{ds}: DeepSpeed rejects this config: .*overlap_comn.*"
                                               r"Extra inputs are not permitted"),
    "DeepSpeed config setting what the run config owns": ([], r"{ds}: train_batch_size must not be set here"),
    "model head does not fit the dataset": (["model.head=recall"], r"model\.head = 'recall' but the dataset .* "
                                                                  r"'nbody' task"),
}


def _break_store(kind: str, clean, dst):
    """A copy of the clean store with the fault of `kind` (or nothing at `dst`)."""
    if kind == "no store and no preset":
        return
    if kind == "N % sp != 0 under fft":
        generate_store("manybody", dst, **{**STORE, "n_bodies": 9})
        return
    shutil.copytree(clean, dst)
    meta_path = dst / "zarr.json"
    if kind == "store of the wrong schema version":
        meta = json.loads(meta_path.read_text())
        meta["attributes"]["schema_version"] = 0
        meta_path.write_text(json.dumps(meta))
    elif kind == "missing array":
        shutil.rmtree(dst / "train" / "charges")
    elif kind in ("shape mismatch", "dtype mismatch"):
        shape, dtype = ((32, 7), "float32") if kind == "shape mismatch" else ((32, 8), "float64")
        zarr.open_group(dst, mode="r+").create_array("train/charges", shape=shape, dtype=dtype, overwrite=True)
    elif kind == "corrupted chunk":
        for chunk in (dst / "train" / "positions" / "c").rglob("*"):
            if chunk.is_file():  # bit rot in every chunk, so the first batch meets it
                data = bytearray(chunk.read_bytes())
                data[len(data) // 2] ^= 0xFF
                chunk.write_bytes(bytes(data))
    elif kind == "NaN/Inf in data":
        velocities = zarr.open_group(dst, mode="r+")["train/velocities"]
        velocities[:, :, 0, 0] = np.nan  # well-formed chunks holding NaN: written by a buggy tool
    elif kind == "split smaller than one batch":
        pass  # the clean store, with a batch larger than the split


def _deepspeed_json(kind: str, tmp_path) -> str:
    bad = {"DeepSpeed config DeepSpeed rejects": {"zero_optimization": {"stage": 1, "overlap_comn": True}},
           "DeepSpeed config setting what the run config owns": {"train_batch_size": 8}}[kind]
    path = tmp_path / f"{kind.split()[-1]}.json"
    path.write_text(json.dumps(bad))
    return str(path)


@pytest.fixture(scope="module")
def train_messages(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad_input")
    clean = generate_store("manybody", tmp_path / "clean", **STORE)
    cases, names = [], {}
    checkpointed = small_run_overrides(tmp_path, "model_change") + ["train.steps=1"]
    cases.append(("(a checkpoint to resume)", checkpointed))
    for i, (kind, (extra, _)) in enumerate(TRAIN_CASES.items()):
        store = tmp_path / f"store{i}"
        base = small_run_overrides(tmp_path, f"case{i}") + ["train.steps=1", "data.preset="]
        names[kind] = {"store": str(store)}
        if kind == "checkpoint of a different model":
            cases.append((kind, checkpointed + ["--resume"]))
            continue
        if kind.startswith("DeepSpeed"):
            names[kind]["ds"] = _deepspeed_json(kind, tmp_path)
            base.append(f"train.deepspeed={names[kind]['ds']}")
        _break_store(kind, clean, store)
        cases.append((kind, base + [f"data.path={store}"] + extra))
    results = run_ranks(_train_errors_with_resume, world=2, args=(cases,), timeout=400)
    assert results[0]["(a checkpoint to resume)"] is None, results[0]["(a checkpoint to resume)"]
    return results, names


def _train_errors_with_resume(rank, world, cases):
    """As _train_errors; a trailing "--resume" in a case's overrides resumes (model changed)."""
    from dist_hyena.train import train

    out = {}
    for kind, overrides in cases:
        resume = overrides[-1:] == ["--resume"]
        if resume:
            overrides = overrides[:-1] + TRAIN_CASES[kind][0]
        try:
            train(load_config(None, overrides), resume=resume)
            out[kind] = None
        except Exception as e:  # the table asserts the message, whatever the type
            out[kind] = f"{type(e).__name__}: {e}"
    return out


@pytest.mark.parametrize("kind", CONFIG_CASES)
def test_config_mistake_is_named(kind):
    overrides, expected = CONFIG_CASES[kind]
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


@pytest.mark.timeout(450)
@pytest.mark.parametrize("kind", TRAIN_CASES)
def test_bad_input_to_training_is_named(kind, train_messages):
    results, names = train_messages
    expected = TRAIN_CASES[kind][1].format(**{k: re.escape(v) for k, v in names[kind].items()})
    for rank, messages in enumerate(results):
        assert messages[kind] is not None, f"rank {rank}: {kind} trained without an error"
        assert re.search(expected, messages[kind], re.S), f"rank {rank}: {messages[kind]}"


@pytest.mark.timeout(120)
def test_hostfile_naming_an_unreachable_host(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("no-such-host.invalid slots=1\n")
    proc = subprocess.run(["deepspeed", "--hostfile", str(hostfile), PROBE, str(tmp_path)], env=launch_env(),
                          capture_output=True, text=True, timeout=100)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"host=no-such-host\.invalid was not reachable via ssh", out), out[-3000:]
    assert not list(tmp_path.glob("rank*.json"))  # no rank was started
