"""Run configuration: typed, strict YAML (`configs/*.yaml`) plus `section.key=value` overrides.

`dist_hyena/configs/default.yaml` holds every default; a run config and the overrides replace the keys they name.
Every section is a dataclass; unknown keys and values of the wrong type are errors that name the file, the
dotted key and the value. The `model` section is `HyenaConfig` itself, except its input widths, which come
from the dataset (`vector_in`, `scalar_in`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_hyena.config import HyenaConfig

# The run and DeepSpeed configs shipped inside the package (package data: an installed package has them too).
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = SHIPPED_CONFIGS / "default.yaml"


class ConfigError(ValueError):
    """A bad run configuration; the message names the file and the dotted key."""


# Every field below is required: its default is its value in default.yaml, the one place defaults live.
@dataclass
class RunSection:
    name: str
    seed: int  # model initialisation and data order
    out_dir: str  # metrics, TensorBoard, checkpoints and plots go to out_dir/name/


@dataclass
class DataSection:
    path: str  # zarr store directory
    source: Literal["store", "generated"]  # "generated": recall made on the fly, no store
    preset: str  # dist_hyena.data preset used to create a missing store
    seed: int  # dataset generation seed
    generate: dict[str, Any]  # generate_store keyword arguments
    num_workers: int
    prefetch: int
    # Training batches only: "permute" shuffles each n-body sample's tokens (particle order is arbitrary; sp = 1).
    augment: Literal["none", "permute"]


@dataclass
class ParallelSection:
    sp: int  # sequence-parallel ranks per sample; dp = world // sp
    timeout_s: float  # rendezvous and every collective: a rank whose peer died raises after this


@dataclass
class OptimSection:
    name: Literal["adam", "adamw", "sgd"]
    lr: float
    weight_decay: float
    betas: list[float]
    momentum: float  # sgd only
    schedule: Literal["constant", "cosine", "linear"]
    warmup_steps: int
    min_lr_ratio: float  # final lr / lr for cosine and linear decay


@dataclass
class TrainSection:
    steps: int  # optimizer steps
    batch_size: int  # samples per optimizer step, over all data-parallel ranks
    grad_accum: int  # micro-batches per optimizer step
    stop_at: int  # end this job after that step, with a checkpoint (a time-limited job); 0: at steps
    nonfinite: Literal["stop", "skip"]  # a non-finite loss: stop naming step and samples, or skip the step
    deepspeed: str  # relative paths: beside the YAML file that sets it, else among the shipped configs


@dataclass
class EvalSection:
    every: int  # optimizer steps between validations (0: only at the end)
    batches: int  # validation batches per rank (0: the whole split)
    batch_size: int  # samples per validation batch per data-parallel rank
    test: bool  # also evaluate the test split at every new best validation MSE (summary: test_mse)


@dataclass
class CheckpointSection:
    every: int  # optimizer steps between checkpoints (0: only at the end)
    keep: int  # complete checkpoints kept (0: all)


@dataclass
class LogSection:
    every: int  # optimizer steps between logged metrics
    sample_ids: bool  # also write samples.jsonl: every step's global sample ids (an audit of the data order)


@dataclass
class TrainConfig:
    run: RunSection
    data: DataSection
    model: HyenaConfig  # HyenaConfig's own defaults (the paper's n-body model) under default.yaml's model keys
    parallel: ParallelSection
    optim: OptimSection
    train: TrainSection
    eval: EvalSection
    checkpoint: CheckpointSection
    log: LogSection

    def to_dict(self) -> dict:
        return _plain(self)


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _typename(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, key: str, where: str):
    """`value` checked against the annotation `tp` (recursing into dataclasses and containers)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{where}: {key} = {value!r} is not a valid {_typename(tp)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key} = {value!r} must be one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _convert(value, option, key, where)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _convert(v, args[1] if args else Any, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # PyYAML reads `1e-4` (no dot) as a string; accept any number spelled as one.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"{where}: {key}: unsupported annotation {tp!r}")


def _build(cls, data, prefix: str, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        keys = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {keys}; known: {sorted(names)}")
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        keys = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in missing)
        raise ConfigError(f"{where}: missing key(s) {keys}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k, where) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {prefix}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"optim.lr=3e-4"` -> (["optim", "lr"], "3e-4" parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def _read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror} (shipped configs: "
                          f"{', '.join(shipped_config_names())})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _overlay(base: dict, data: dict) -> dict:
    """`data`'s keys replace `base`'s, section by section (a section that is not a mapping replaces it whole,
    so that the strict build names it)."""
    merged = {name: dict(section) for name, section in base.items()}
    for name, section in data.items():
        if isinstance(section, dict) and isinstance(merged.get(name), dict):
            merged[name].update(section)
        else:
            merged[name] = section
    return merged


def _shipped_or_beside(value: str, yaml_dir: Path) -> str:
    """A relative path from a YAML file: beside that file when it is there, else among the shipped configs."""
    path = Path(value)
    if path.is_absolute():
        return value
    beside = yaml_dir / path
    return str(beside if beside.exists() else SHIPPED_CONFIGS / path)


def config_path(name_or_path: str | Path) -> Path:
    """A YAML file, or the name of a shipped config (`nbody5`, `recall.yaml`) when no such file exists."""
    path = Path(name_or_path)
    if path.exists() or path.parent != Path("."):
        return path
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return shipped if shipped.exists() else path


def shipped_config_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """default.yaml, then the run config `path` (a file or a shipped config's name; None: none), then the
    `section.key=value` overrides, each replacing the keys it names: a config file names what differs from the
    defaults."""
    data = _read_yaml(DEFAULT_CONFIG)
    where = "defaults"
    yaml_dir = DEFAULT_CONFIG.parent
    if path is not None:
        path = config_path(path)
        where = str(path)
        yaml_dir = Path(path).parent
        data = _overlay(data, _read_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[keys[-1]] = value
    if overrides:
        where += " with overrides " + " ".join(overrides)
    cfg = _build(TrainConfig, data, "", where)
    cfg.train.deepspeed = _shipped_or_beside(cfg.train.deepspeed, yaml_dir)
    return cfg
