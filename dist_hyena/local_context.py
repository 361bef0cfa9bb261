"""Local geometric context (docs/design.md §2.4): an equivariant short convolution over sequence neighbours.

For token i and each tap δ (``circular``: δ ∈ {-w … w} \\ {0}, indices mod N; ``causal``: δ ∈ {-w … -1}, taps
before the first token absent) the pair (i, j = i + δ) gives the vectors

    V_ij = [p_j - p_i (each position channel), X_i (the stream's vectors), X_j]

(p the centred input positions; without positions the relative vector X_j - X_i is in the span of V already)
and the invariants: the Gram matrix of V_ij (|r|², r·X, X_i·X_j, …), both tokens' scalars F_i, F_j and a learned
embedding of δ, each tap's own parameters. An MLP of the invariants gives a message m_ij; the update is

    ΔX_i = (1/T) Σ_δ Σ_k a_k(m_ij) V_ij,k        ΔF_i = (1/T) Σ_δ s(m_ij)        (T taps)

so the layer is E(3)-equivariant (inner products are O(3)-invariant, the update is a combination of V with
invariant coefficients, p_j - p_i is translation-invariant). With a ``cutoff`` r_c each tap's message is also
weighted by ½(cos(π r / r_c) + 1), r = |p_j - p_i| (0 from r_c on; an invariant, so equivariance holds).
The output layers start at zero: a fresh layer adds nothing, and training starts from the paper's block.
O(N·w) time and memory; with ``token_chunk`` the per-pair activations exist one chunk of tokens at a time
(recomputed in backward).

Under sequence parallelism each rank extends its block by the 2w (causal: w) neighbouring tokens' inputs, with
``dist_hyena.parallel.halo_exchange`` (docs/design.md §3.6); the rest is token-wise.
"""

from __future__ import annotations

import torch
from torch import nn

from .nn.chunked import chunked


def taps(window: int, mode: str) -> list[int]:
    """The offsets δ of the taps, left to right."""
    return list(range(-window, 0)) + (list(range(1, window + 1)) if mode == "circular" else [])


def extend_sequence(t: torch.Tensor, window: int, mode: str) -> torch.Tensor:
    """One process's halo: ``[B, N, F] -> [B, w + N + R, F]``, row k the token a - w + k (a = 0; mod N when
    ``circular``, R = w; zeros before the first token when ``causal``, R = 0)."""
    n = t.shape[1]
    if mode == "causal":
        return torch.cat([t.new_zeros(t.shape[0], window, *t.shape[2:]), t], dim=1)
    if window <= n:  # slices: nothing kept for backward (an index would be, 8 bytes a token)
        return torch.cat([t[:, n - window :], t, t[:, :window]], dim=1)
    return t[:, torch.arange(-window, n + window, device=t.device) % n]


class LocalContext(nn.Module):
    """``forward(x [B, n, Cv, 3], f [B, n, D], pos [B, n, P, 3] | None, counts)`` -> ``(ΔX, ΔF)`` of the same
    shapes, on this rank's token block (``counts``: every SP rank's token count; one process: ``[n]``)."""

    ledger_name = "local_context"

    def __init__(self, window: int, mode: str, n_vector: int, n_scalar: int, n_position: int, hidden: int,
                 mesh=None, token_chunk: int | None = None, cutoff: float | None = None):
        super().__init__()
        if window < 1:
            raise ValueError(f"LocalContext needs a window >= 1, got {window}")
        if cutoff is not None and not (cutoff > 0 and n_position):
            raise ValueError(f"LocalContext's cutoff needs a position channel and a positive distance, got {cutoff} "
                             f"with {n_position} position channels")
        self.cutoff = cutoff
        self.window, self.mode, self.mesh = window, mode, mesh
        self.token_chunk = token_chunk
        self.cv, self.d, self.p = n_vector, n_scalar, n_position
        self.offsets = taps(window, mode)
        n_v = n_position + 2 * n_vector
        rows, cols = torch.triu_indices(n_v, n_v)
        self.register_buffer("gram_rows", rows, persistent=False)
        self.register_buffer("gram_cols", cols, persistent=False)
        self.register_buffer("offset", torch.tensor(self.offsets), persistent=False)
        n_inv = len(rows) + 2 * n_scalar
        self.tap_embedding = nn.Parameter(torch.randn(len(self.offsets), hidden) / hidden**0.5)
        self.edge_in = nn.Linear(n_inv, hidden)
        self.edge_hidden = nn.Linear(hidden, hidden)
        self.to_vectors = nn.Linear(hidden, n_vector * n_v)
        self.to_scalars = nn.Linear(hidden, n_scalar)
        for layer in (self.to_vectors, self.to_scalars):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _extend(self, feat: torch.Tensor, counts: list[int]) -> torch.Tensor:
        if self.mesh is None or self.mesh.sp == 1:
            return extend_sequence(feat, self.window, self.mode)
        from .parallel import halo_exchange

        return halo_exchange(feat, counts, self.window, self.mode, self.mesh, layer=self.ledger_name)

    def _split(self, t: torch.Tensor):
        """Packed features ``[..., 3P + 3Cv + D]`` -> positions ``[..., P, 3]``, vectors ``[..., Cv, 3]``, scalars."""
        p, cv = 3 * self.p, 3 * self.cv
        return (t[..., :p].unflatten(-1, (self.p, 3)), t[..., p : p + cv].unflatten(-1, (self.cv, 3)),
                t[..., p + cv :])

    def messages(self, ext: torch.Tensor, first: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The update of the tokens ``ext`` holds the taps of: ``ext [B, w + c + R, F]`` covers tokens
        ``first - w … first + c + R - 1`` (global indices; ``first`` is the global index of the first output)."""
        w, c = self.window, ext.shape[1] - self.window - (self.window if self.mode == "circular" else 0)
        p_i, x_i, f_i = (t[:, :, None] for t in self._split(ext[:, w : w + c]))  # [B, c, 1, ...]
        neighbours = torch.stack([ext[:, w + d : w + d + c] for d in self.offsets], dim=2)  # [B, c, T, F]
        p_j, x_j, f_j = self._split(neighbours)
        shape = x_j.shape[:3]
        vectors = torch.cat([p_j - p_i, x_i.expand(*shape, -1, -1), x_j], dim=3)  # [B, c, T, n_v, 3]
        gram = (vectors @ vectors.transpose(-1, -2))[..., self.gram_rows, self.gram_cols]
        invariants = torch.cat([gram, f_i.expand(*shape, -1), f_j], dim=-1)
        m = nn.functional.silu(self.edge_in(invariants) + self.tap_embedding)
        m = nn.functional.silu(self.edge_hidden(m))
        weight = torch.full_like(m[..., :1], 1.0 / len(self.offsets))  # [B, c, T, 1]
        if self.cutoff is not None:  # a smooth envelope: sequence neighbours farther than the cutoff add nothing
            r = (p_j - p_i)[..., 0, :].norm(dim=-1, keepdim=True)  # [B, c, T, 1], the first position channel
            weight = weight * torch.where(r < self.cutoff, 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1), 0.0)
        if self.mode == "causal":  # no tap before the first token
            index = first + torch.arange(c, device=ext.device)[:, None] + self.offset
            weight = weight * (index >= 0).to(weight.dtype)[..., None]
        coef = (self.to_vectors(m) * weight).unflatten(-1, (self.cv, vectors.shape[3]))  # [B, c, T, Cv, n_v]
        dx = torch.einsum("bctok,bctkd->bcod", coef, vectors)
        df = (self.to_scalars(m) * weight).sum(dim=2)
        return dx, df

    def forward(self, x: torch.Tensor, f: torch.Tensor, pos: torch.Tensor | None,
                counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = x.shape[:2]
        parts = ([pos.flatten(2)] if self.p else []) + [x.flatten(2), f]
        ext = self._extend(torch.cat(parts, dim=-1), counts)
        start = 0 if self.mesh is None else sum(counts[: self.mesh.sp_rank])
        # token_chunk counts rows of the MLPs; here a token has T pairs, so a chunk holds token_chunk / T tokens.
        chunk = None if self.token_chunk is None else max(1, self.token_chunk // len(self.offsets))
        if chunk is None or chunk >= n:
            return self.messages(ext, start)
        # Only ext is kept for backward; the pairs of one chunk at a time are recomputed there.
        return chunked(lambda s, piece: self.messages(piece, start + s), chunk, (ext,), tuple(self.parameters()),
                       dim=1, halo=ext.shape[1] - n)
