"""The one helper for equivariance checks (random rigid motions in, compare out) and the tests' one relative error."""

from __future__ import annotations

import torch


def random_rotation(dtype=torch.float64, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random proper rotation ``[3, 3]`` (det = +1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def reflection(dtype=torch.float64) -> torch.Tensor:
    """The mirror z -> -z (det = -1)."""
    return torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=dtype))


def rotate(vectors: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Apply ``q`` to ``[..., 3]`` vectors."""
    return vectors @ q.T


def rigid_motion(x: torch.Tensor, q: torch.Tensor, t: torch.Tensor, position_channels) -> torch.Tensor:
    """Rotate every vector channel of ``x`` ``[B, N, C, 3]``; translate only the position channels."""
    y = rotate(x, q)
    shift = torch.zeros_like(y)
    shift[:, :, list(position_channels)] = t
    return y + shift


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e|: scale-free, so float32 checks do not depend on the output's size."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _check(model, x, f, x_moved, q, t, tol, outputs):
    x_out, f_out = model(x, f)
    x_new, f_new = model(x_moved, f)
    expected = rotate(x_out, q) + (t if outputs == "positions" else 0)
    err_v, err_s = relative_error(x_new, expected), relative_error(f_new, f_out)
    assert err_v <= tol, f"vector output not equivariant: relative error {err_v:.3e} > {tol:.1e}"
    assert err_s <= tol, f"scalar output not invariant: relative error {err_s:.3e} > {tol:.1e}"
    return max(err_v, err_s)


def assert_equivariant(model, x, f, position_channels, *, translation=10.0, tol=1e-10, seed=0, outputs="positions",
                       reflect=False):
    """model(g·x, f) == g·model(x, f) for a random rotation and translation g; scalars unchanged.

    ``outputs``: "positions" (the vector output rotates and translates) or "vectors" (rotates only).
    ``reflect``: g's linear part is a mirror composed with the rotation (det -1: E(3), not only SE(3)).
    ``model`` is anything called as ``model(x [B, N, C, 3], f [B, N, S]) -> (vectors, scalars)``.
    Errors are relative to the output's magnitude.

    In float64 g is applied whole. In float32 a position moved to ~1e3 is itself rounded to
    ulp(1e3) ~ 6e-5, so a combined g would measure the rounding of the *input*, not the model.
    There the two generators are checked separately, each exact on the input side: the rotation
    at the data's own scale, and an integer translation of positions pre-rounded to a 2^-10 grid
    (x + t is then exact in float32).
    """
    gen = torch.Generator().manual_seed(seed)
    q = random_rotation(x.dtype, gen)
    if reflect:
        q = reflection(x.dtype) @ q
    t = translation * torch.randn(3, dtype=torch.float64, generator=gen)
    if x.dtype == torch.float64:
        return _check(model, x, f, rigid_motion(x, q, t, position_channels), q, t, tol, outputs)
    zero, identity = torch.zeros(3, dtype=x.dtype), torch.eye(3, dtype=x.dtype)
    err = _check(model, x, f, rigid_motion(x, q, zero, position_channels), q, zero, tol, outputs)
    if position_channels:
        grid = 2.0**-10
        x_grid = torch.round(x / grid) * grid
        t = torch.round(t).to(x.dtype)
        moved = rigid_motion(x_grid, identity, t, position_channels)
        err = max(err, _check(model, x_grid, f, moved, identity, t, tol, outputs))
    return err
