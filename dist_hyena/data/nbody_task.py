"""n-body samples (docs/design.md §4.1): seeded initial conditions, simulation, token order.

Every sample's randomness comes from its own generator, seeded by (dataset seed, split,
sample index), so the bytes of a sample do not depend on which rank makes it or which
other samples are simulated beside it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dist_hyena.data.layout import ArraySpec, sample_rng
from dist_hyena.data.simulate import simulate_leapfrog, simulate_nri
from dist_hyena.runtime import local_rank_from

TOKEN_ORDERS = ("index", "radial")
# Below this many body pairs per simulated batch, the simulation runs on one CPU thread.
_THREADED_PAIRS = 1 << 20


@dataclass(frozen=True)
class NBodyParams:
    """What a many-sample n-body dataset is; stored verbatim in the store's attributes.

    record_steps: simulation steps kept as frames (0 = initial state); the model reads
    frame `input_frame` and predicts the positions of frame `target_frame` (indices into
    record_steps).
    """

    n_bodies: int = 5
    integrator: str = "nri"  # "nri" (benchmark quirks) or "leapfrog" (softened, KDK)
    record_steps: tuple[int, ...] = (3100, 4100)
    input_frame: int = 0
    target_frame: int = 1
    dt: float = 1e-3
    max_force: float = 100.0  # per-component clip, "nri" only
    softening: float = 0.0  # Plummer ε, "leapfrog" only
    vel_norm: float = 0.5
    token_order: str = "index"

    def __post_init__(self):
        if self.n_bodies < 2:
            raise ValueError(f"n_bodies must be >= 2, got {self.n_bodies}")
        if self.integrator not in ("nri", "leapfrog"):
            raise ValueError(f"integrator must be 'nri' or 'leapfrog', got {self.integrator!r}")
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {self.token_order!r}")
        for name in ("input_frame", "target_frame"):
            if not 0 <= getattr(self, name) < len(self.record_steps):
                raise ValueError(f"{name} must index record_steps {list(self.record_steps)}")


class NBodyTask:
    """Makes n-body samples: positions, velocities [b, F, N, 3] and charges [b, N]."""

    task = "nbody"

    def __init__(self, params: NBodyParams, seed: int, device: str | None = None):
        self.params = params
        self.seed = seed
        self.device = torch.device(device or _default_device())

    @property
    def n_tokens(self) -> int:
        return self.params.n_bodies

    def attrs(self) -> dict:
        p = self.params
        return {
            "task": self.task,
            "generator": "dist_hyena.data.nbody_task",
            "params": {**asdict(p), "record_steps": list(p.record_steps)},
            "n_tokens": p.n_bodies,
            "vector_in": 2,
            "scalar_in": 1,
            "token_order": p.token_order,
            "input_frame": p.input_frame,
            "target_frame": p.target_frame,
        }

    def array_specs(self, tokens_per_chunk: int) -> list[ArraySpec]:
        n, f, t = self.params.n_bodies, len(self.params.record_steps), tokens_per_chunk
        return [
            ArraySpec("positions", (f, n, 3), (1, t, 3), token_axis=2),
            ArraySpec("velocities", (f, n, 3), (1, t, 3), token_axis=2),
            ArraySpec("charges", (n,), (t,), token_axis=1),
        ]

    def initial_conditions(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sample's x(0) ~ N(0, s²I) with s = (n/5)^{1/3}, |v(0)| = vel_norm in a random
        direction, charges ±1 with p = ½. -> pos, vel [N, 3], charges [N] (float64)."""
        rng = sample_rng(self.seed, split, index)
        n = self.params.n_bodies
        charges = rng.choice(np.array([-1.0, 1.0]), size=n)
        pos = rng.standard_normal((n, 3)) * (n / 5.0) ** (1.0 / 3.0)
        vel = rng.standard_normal((n, 3))
        vel *= self.params.vel_norm / np.linalg.norm(vel, axis=1, keepdims=True)
        return pos, vel, charges

    def generate(self, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples [start, stop) of a split, simulated together (float64), stored float32."""
        init = [self.initial_conditions(split, i) for i in range(start, stop)]
        pos, vel, charges = (torch.from_numpy(np.stack(a)).to(self.device) for a in zip(*init, strict=True))
        p = self.params
        with _threads_for(pos.device, pos.shape[0] * pos.shape[1] ** 2):
            if p.integrator == "nri":
                positions, velocities = simulate_nri(pos, vel, charges, p.record_steps, p.dt, p.max_force)
            else:
                positions, velocities = simulate_leapfrog(pos, vel, charges, p.record_steps, p.dt, p.softening)
        if p.token_order == "radial":
            positions, velocities, charges = radial_order(positions, velocities, charges, p.input_frame)
        return {
            "positions": positions.cpu().numpy().astype(np.float32),
            "velocities": velocities.cpu().numpy().astype(np.float32),
            "charges": charges.cpu().numpy().astype(np.float32),
        }


def _default_device() -> str:
    """A GPU when there is one: each rank of a node its own."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank_from(os.environ) % torch.cuda.device_count()}"


@contextlib.contextmanager
def _threads_for(device: torch.device, pairs: int):
    """One CPU thread for small systems: on tensors this small (the 5-body benchmark),
    intra-op threading costs more than it saves, and collapses when cores are shared
    (measured: 10x slower at 2 threads on a loaded 2-core machine)."""
    if device.type != "cpu" or pairs >= _THREADED_PAIRS:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def radial_order(positions, velocities, charges, frame: int):
    """Sort tokens by distance from the centroid at `frame` (rotation-invariant order).
    positions, velocities [B, F, N, 3], charges [B, N] -> the same, permuted along N."""
    x = positions[:, frame]
    dist = (x - x.mean(1, keepdim=True)).norm(dim=-1)  # [B, N]
    order = torch.sort(dist, dim=1, stable=True).indices
    take = order[:, None, :, None].expand(-1, positions.shape[1], -1, 3)
    return positions.gather(2, take), velocities.gather(2, take), charges.gather(1, order)
