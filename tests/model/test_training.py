"""The model learns: a short Adam run on a tiny generated 5-body batch lowers the loss."""

import torch

from dist_hyena import HyenaConfig, SE3HyenaModel
from tests.helpers.training import adam_losses, nbody5_batch


def test_short_run_lowers_the_loss():
    x, f, target = nbody5_batch(32)

    torch.manual_seed(0)
    losses = adam_losses(SE3HyenaModel(HyenaConfig()), x, f, target)
    # Predicting "no motion" (x40 = x30) costs the initial-loss level; learning must beat it clearly.
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert all(torch.isfinite(torch.tensor(losses)))
