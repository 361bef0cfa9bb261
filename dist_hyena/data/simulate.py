"""Charged-particle physics in torch (docs/design.md §4.1), vectorised over samples.

Bodies have unit mass and charges q_i = ±1; the force on body i is
F_i = Σ_{j≠i} q_i q_j (x_i − x_j) / (|x_i − x_j|² + ε²)^{3/2} (like charges repel).
The pairwise sum is O(n²) and is computed in tiles of bodies so memory stays
bounded for many bodies; tensors may live on any device (a GPU when present).

Two integrators:
- `simulate_nri`: the published 5-body benchmark's scheme (Kipf et al. NRI, 3-D in
  Satorras et al. EGNN) with its quirks — per-component force clip at ±max_force and a
  first *full* kick before the drift-kick loop — so the data matches the benchmark.
- `simulate_leapfrog`: kick-drift-kick leapfrog with Plummer softening ε, symplectic and
  rotation-invariant (no per-component clip), for many-body data.
Both record the state after the requested step numbers (step 0 = the initial state).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Pair tiles hold B * tile_i * tile_j * 3 values; this bound keeps a tile ~200 MB in float64.
_MAX_PAIR_ELEMENTS = 8 * 1024 * 1024
# The j-tile fixes the summation order of the pairwise sum; keeping it independent of the
# batch size makes results independent of how samples are grouped.
_TILE_J = 2048


def charged_forces(pos: torch.Tensor, charges: torch.Tensor, softening: float = 0.0) -> torch.Tensor:
    """Coulomb-like forces. pos [B, N, 3], charges [B, N] -> forces [B, N, 3].

    With softening = 0 the self term (r = 0, 1/r³ = inf) is set to zero.
    """
    batch, n, _ = pos.shape
    tile_j = min(n, _TILE_J)
    tile_i = max(1, min(n, _MAX_PAIR_ELEMENTS // (3 * batch * tile_j)))
    eps2 = softening * softening
    forces = torch.empty_like(pos)
    for i0 in range(0, n, tile_i):
        xi, qi = pos[:, i0 : i0 + tile_i], charges[:, i0 : i0 + tile_i, None]
        acc = None
        for j0 in range(0, n, tile_j):
            diff = xi[:, :, None, :] - pos[:, None, j0 : j0 + tile_j, :]  # [B, ti, tj, 3]
            inv_r3 = diff.square().sum(-1)
            if eps2:
                inv_r3 += eps2
            inv_r3.pow_(-1.5)
            if not eps2:
                inv_r3.nan_to_num_(posinf=0.0)
            inv_r3 *= qi * charges[:, None, j0 : j0 + tile_j]
            part = (inv_r3.unsqueeze(-1) * diff).sum(2)
            acc = part if acc is None else acc.add_(part)
        forces[:, i0 : i0 + tile_i] = acc
    return forces


def simulate_nri(
    pos: torch.Tensor,
    vel: torch.Tensor,
    charges: torch.Tensor,
    record_steps: Sequence[int],
    dt: float = 1e-3,
    max_force: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's integrator. pos, vel [B, N, 3], charges [B, N] -> positions and
    velocities after each step in `record_steps` (0 = initial state), each [B, F, N, 3].

    As in the reference generator: clip each force component to ±max_force, kick a full
    dt before the first drift, then per step drift, record, kick. Recorded velocities
    therefore lead positions by half a step, like the benchmark's.
    """
    record = _Recorder(record_steps)
    pos, vel = pos.clone(), vel.clone()
    record(0, pos, vel)
    vel.add_(charged_forces(pos, charges).clamp_(-max_force, max_force), alpha=dt)
    for step in range(1, max(record_steps) + 1):
        pos.add_(vel, alpha=dt)
        record(step, pos, vel)
        if step < max(record_steps):
            vel.add_(charged_forces(pos, charges).clamp_(-max_force, max_force), alpha=dt)
    return record.stacked()


def simulate_leapfrog(
    pos: torch.Tensor,
    vel: torch.Tensor,
    charges: torch.Tensor,
    record_steps: Sequence[int],
    dt: float = 1e-3,
    softening: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kick-drift-kick leapfrog with Plummer softening. pos, vel [B, N, 3], charges [B, N]
    -> positions, velocities after each step in `record_steps` (0 = initial state), each
    [B, F, N, 3]; recorded velocities are synchronous with positions."""
    record = _Recorder(record_steps)
    pos, vel = pos.clone(), vel.clone()
    record(0, pos, vel)
    force = charged_forces(pos, charges, softening)
    for step in range(1, max(record_steps) + 1):
        vel += 0.5 * dt * force
        pos += dt * vel
        force = charged_forces(pos, charges, softening)
        vel += 0.5 * dt * force
        record(step, pos, vel)
    return record.stacked()


class _Recorder:
    """Keeps copies of the state at the requested steps, in the requested order."""

    def __init__(self, steps: Sequence[int]):
        if not steps or min(steps) < 0:
            raise ValueError(f"record_steps must be non-empty and >= 0, got {list(steps)}")
        self.steps = list(steps)
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, step: int, pos: torch.Tensor, vel: torch.Tensor) -> None:
        if step in self.steps:
            self.saved[step] = (pos.clone(), vel.clone())

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.stack([self.saved[s][0] for s in self.steps], 1)
        vel = torch.stack([self.saved[s][1] for s in self.steps], 1)
        return pos, vel


def energy(pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor, softening: float = 0.0) -> torch.Tensor:
    """Total energy ½Σ|v|² + Σ_{i<j} q_i q_j / sqrt(|r_ij|² + ε²). pos, vel [B, N, 3] -> [B].

    Dense O(N²): meant for checks on small systems.
    """
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    d2 = (diff * diff).sum(-1) + softening**2
    n = pos.shape[1]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=pos.device)
    pair = charges[:, :, None] * charges[:, None, :] * torch.where(off_diag, d2, 1.0).rsqrt()
    potential = 0.5 * (pair * off_diag).sum((1, 2))
    return 0.5 * (vel * vel).sum((1, 2)) + potential
