"""The model learns: a short Adam run on a tiny generated 5-body batch lowers the loss."""

import torch

from dist_hyena import HyenaConfig, SE3HyenaModel
from dist_hyena.data import make_task
from tests.helpers.training import adam_losses


def test_short_run_lowers_the_loss():
    data = make_task("nbody5", seed=0, device="cpu").generate("train", 0, 32)
    pos, vel, charges = (torch.from_numpy(data[k]) for k in ("positions", "velocities", "charges"))
    x = torch.stack([pos[:, 0], vel[:, 0]], dim=2)  # [B, 5, 2, 3]: position and velocity at frame 30
    f = charges[..., None]  # [B, 5, 1]
    target = pos[:, 1, :, None]  # [B, 5, 1, 3]: positions at frame 40

    torch.manual_seed(0)
    losses = adam_losses(SE3HyenaModel(HyenaConfig()), x, f, target)
    # Predicting "no motion" (x40 = x30) costs the initial-loss level; learning must beat it clearly.
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert all(torch.isfinite(torch.tensor(losses)))
