"""Physics of the n-body generator: conservation laws, symmetry, tiling, and the published
5-body benchmark distribution."""

import numpy as np
import torch

from dist_hyena.data import make_task
from dist_hyena.data import simulate as sim
from dist_hyena.data.recall_task import random_rotation


def _initial(task, n_samples):
    init = [task.initial_conditions("train", i) for i in range(n_samples)]
    return (torch.from_numpy(np.stack(a)) for a in zip(*init, strict=True))


def test_tiled_forces_equal_dense_sum(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(2, 37, 3, dtype=torch.float64, generator=gen)
    q = torch.randint(0, 2, (2, 37), generator=gen).double() * 2 - 1
    diff = pos[:, :, None] - pos[:, None]
    d2 = (diff**2).sum(-1) + 0.01
    dense = (q[:, :, None, None] * q[:, None, :, None] * diff * d2[..., None] ** -1.5).sum(2)
    monkeypatch.setattr(sim, "_TILE_J", 8)  # forces several tiles in both directions
    monkeypatch.setattr(sim, "_MAX_PAIR_ELEMENTS", 2 * 3 * 8 * 5)
    assert torch.allclose(sim.charged_forces(pos, q, softening=0.1), dense, rtol=1e-12, atol=1e-12)


def test_manybody_conserves_momentum_and_bounds_energy_drift():
    task = make_task("manybody", seed=1, n_bodies=64)
    pos, vel, q = _initial(task, 2)
    steps = list(range(0, 2001, 200))
    p, v = sim.simulate_leapfrog(pos, vel, q, steps, dt=1e-3, softening=0.1)
    momentum = v.sum(2)  # unit masses: [B, F, 3]
    assert (momentum - momentum[:, :1]).abs().max() < 1e-11
    drift = _energy_drift(p, v, q, vel)
    assert drift < 1e-3, f"relative energy drift {drift:.2e}"
    # The measure is sensitive: a 4x coarser step over the same time drifts clearly more.
    p4, v4 = sim.simulate_leapfrog(pos, vel, q, [s // 4 for s in steps], dt=4e-3, softening=0.1)
    assert _energy_drift(p4, v4, q, vel) > 4 * drift


def _energy_drift(p, v, q, vel0):
    """max over frames of |E(t) - E(0)| / kinetic energy at t = 0, worst sample."""
    energies = torch.stack([sim.energy(p[:, f], v[:, f], q, 0.1) for f in range(p.shape[1])], 1)
    kinetic0 = 0.5 * (vel0**2).sum((1, 2))
    return ((energies - energies[:, :1]).abs().max(1).values / kinetic0).max().item()


def test_leapfrog_is_rotation_equivariant():
    task = make_task("manybody", seed=2, n_bodies=16)
    pos, vel, q = _initial(task, 1)
    rot = torch.from_numpy(random_rotation(np.random.default_rng(0)))
    p, v = sim.simulate_leapfrog(pos, vel, q, [0, 300], softening=0.1)
    p_rot, v_rot = sim.simulate_leapfrog(pos @ rot.T, vel @ rot.T, q, [0, 300], softening=0.1)
    assert torch.allclose(p_rot, p @ rot.T, atol=1e-9) and torch.allclose(v_rot, v @ rot.T, atol=1e-9)


def test_nbody5_matches_published_distribution():
    """Best constant c in x30 + c·v30 against x40: MSE ≈ 0.085 on the benchmark (EGNN data)."""
    task = make_task("nbody5", seed=0)
    data = task.generate("train", 0, 400)
    x30, x40 = data["positions"][:, 0].astype(np.float64), data["positions"][:, 1].astype(np.float64)
    v30 = data["velocities"][:, 0].astype(np.float64)
    c = ((x40 - x30) * v30).sum() / (v30 * v30).sum()
    mse = ((x40 - x30 - c * v30) ** 2).mean()
    assert abs(mse - 0.085) < 0.01, f"best-c extrapolation MSE {mse:.4f}"
    assert set(np.unique(data["charges"])) == {-1.0, 1.0}
    assert 0.5 < c < 1.0
