"""Training with DeepSpeed over a dp × sp mesh (docs/design.md §3.4, §5).

    from dist_hyena.train import load_config, train
    train(load_config("dist_hyena/configs/default.yaml", ["optim.lr=3e-4"]), resume=True)

`dist_hyena.train.export.load_exported(path)` loads an exported model without DeepSpeed.
"""

from dist_hyena.train.config import ConfigError, TrainConfig, load_config


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """See :func:`dist_hyena.train.trainer.train` (imported on call: it imports DeepSpeed)."""
    from dist_hyena.train.trainer import train as _train

    return _train(cfg, resume=resume)


__all__ = ["ConfigError", "TrainConfig", "load_config", "train"]
