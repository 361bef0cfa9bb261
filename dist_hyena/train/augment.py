"""Training-batch augmentations: free data that the task's symmetries allow.

``permute``: particle order in an n-body system is arbitrary, so every training sample's tokens are shuffled
(inputs and targets alike) by a fresh random permutation. The model, which is not permutation-equivariant
(docs/design.md §2.1), then sees each system in many orders. Drawn from torch's global generator, whose state every
checkpoint saves, so a resumed run draws the same permutations.
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("none", "permute")


def permute_tokens(batch: dict) -> dict:
    """The batch with each sample's tokens (dim 1 of "x", "f" and the per-token target "y") shuffled."""
    b, n = batch["x"].shape[:2]
    order = torch.rand(b, n).argsort(dim=1)
    out = dict(batch)
    for key in ("x", "f", "y"):
        t = batch[key]
        index = order.view(b, n, *[1] * (t.dim() - 2)).expand_as(t)
        out[key] = t.gather(1, index.to(t.device))
    return out
