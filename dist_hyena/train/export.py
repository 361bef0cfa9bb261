"""Export a DeepSpeed checkpoint to a plain PyTorch file that `SE3HyenaModel` loads alone.

    model = load_exported("runs/default/model.pt")     # no DeepSpeed needed
    x_out, f_out = model(x, f)

The file holds {"config": HyenaConfig.to_dict(), "state_dict": fp32 parameters}.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dist_hyena.baselines import build_model
from dist_hyena.config import HyenaConfig
from dist_hyena.model import SE3HyenaModel


def export_checkpoint(root: str | Path, tag: str, model_cfg: HyenaConfig, out: str | Path) -> Path:
    """Consolidate the checkpoint `root/tag` (any ZeRO stage) into fp32 weights at `out`."""
    root, out = Path(root), Path(out)
    if any((root / tag).glob("*optim_states.pt")):
        # ZeRO (or bf16) checkpoints keep the fp32 master weights in per-rank optimizer shards.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    else:
        state = torch.load(root / tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    state = {k: v.detach().float().clone() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"config": model_cfg.to_dict(), "state_dict": state}, tmp)
    tmp.replace(out)
    return out


def load_exported(path: str | Path, mesh=None, **execution) -> SE3HyenaModel:  # or a HyenaConfig.baseline model
    """The model saved by :func:`export_checkpoint`, in eval mode. ``execution``: config keys that change how,
    not what, it computes (e.g. ``mlp_token_chunk`` for long sequences)."""
    saved = torch.load(Path(path), weights_only=True)
    model = build_model(HyenaConfig(**{**saved["config"], **execution}), mesh=mesh)
    model.load_state_dict(saved["state_dict"])
    return model.eval()
