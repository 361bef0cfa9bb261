"""The run config is typed and strict; every shipped config loads; every DeepSpeed JSON is
accepted by DeepSpeed's own config parser once the run's batch sizes are filled in."""

from pathlib import Path

import pytest

from dist_hyena.train.config import SHIPPED_CONFIGS, ConfigError, load_config
from dist_hyena.train.engine import deepspeed_config, lr_factor

CONFIGS = SHIPPED_CONFIGS


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert Path(cfg.train.deepspeed).is_file()
    assert cfg.train.batch_size % cfg.train.grad_accum == 0


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=1e-4", "model.n_blocks=3", "data.generate={train: 8}", "parallel.sp=2"])
    assert (cfg.optim.lr, cfg.model.n_blocks, cfg.data.generate, cfg.parallel.sp) == (1e-4, 3, {"train": 8}, 2)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key(s) optim.lrr"),
    ("nosuch.key=1", "unknown key(s) nosuch"),
    ("model.n_blocks=two", "model.n_blocks = 'two' is not a valid int"),
    ("train.steps=1.5", "train.steps = 1.5 is not a valid int"),
    ("optim.lr=fast", "optim.lr = 'fast' is not a valid float"),
    ("model.activation_checkpointing=1", "model.activation_checkpointing = 1 is not a valid bool"),
    ("optim.name=rmsprop", "optim.name = 'rmsprop' must be one of"),
    ("model.head=graph", "HyenaConfig.head must be one of"),
    ("train=3", "train must be a mapping"),
    ("steps", "is not of the form section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value) and override.partition("=")[0] in str(err.value)


def test_bad_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: 10\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key\\(s\\) train.batchsize"):
        load_config(path)
    path.write_text("optim:\n  betas: [0.9, fast]\n")
    with pytest.raises(ConfigError, match=r"optim.betas\[1\] = 'fast' is not a valid float"):
        load_config(path)


@pytest.mark.parametrize("path", sorted((CONFIGS / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_configs_validated_by_deepspeed(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = DeepSpeedConfig(deepspeed_config(path, micro_batch=4, grad_accum=2, sp=2))
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (4, 2, 8)


def test_deepspeed_config_must_not_duplicate_the_run_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"train_batch_size": 64, "zero_optimization": {"stage": 1}}')
    with pytest.raises(ConfigError, match="train_batch_size must not be set here"):
        deepspeed_config(path, micro_batch=4, grad_accum=1, sp=1)
    path.write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError, match="reduce_scatter must be false"):
        deepspeed_config(path, micro_batch=4, grad_accum=1, sp=2)


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = load_config(None, ["optim.schedule=cosine", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    f = lr_factor(cfg.optim, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def test_no_file_means_the_shipped_defaults():
    """load_config(None) (what the tests use) is the no-argument run (what users get): one set of defaults."""
    from dist_hyena.train.config import DEFAULT_CONFIG

    assert load_config(None).to_dict() == load_config(DEFAULT_CONFIG).to_dict()


def test_a_config_file_replaces_only_the_keys_it_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\n")
    cfg, defaults = load_config(path), load_config(None)
    assert cfg.optim.lr == 1e-4 and cfg.optim.schedule == defaults.optim.schedule
    assert cfg.train.deepspeed == defaults.train.deepspeed and Path(cfg.train.deepspeed).is_file()
