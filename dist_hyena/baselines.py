"""Baselines outside SE3HyenaModel: the paper's linear baseline and an EGNN, both built by :func:`build_model`.

The paper's linear baseline (its n-body table: "Linear", MSE 0.0322) is an equivariant linear map.

``LinearBaseline`` has no blocks and no token mixing beyond token means. With x_i the centred position channel(s)
and v_i the other (translation-invariant) vector channels of token i, each output vector is

    x_out_i = x_i[pos0] + Σ_c a_c · x_i[c] + Σ_c b_c · mean_j x_j[c]          (n-body head, + centroid)
    x_out   = Σ_c b_c · mean_j x_j[c]                                          (recall head)

with learned scalars a, b per output channel: linear in the input vectors, equivariant to rotations (scalar
coefficients), translations (positions are centred, the centroid added back) and token permutations. The mean
of a centred position is zero, so its b term is dropped. Scalar inputs cannot enter a map that is both linear and
rotation-equivariant; the scalar outputs are zeros. ``baseline="linear"`` in ``HyenaConfig`` selects it through
:func:`build_model`, which is how the trainer builds every model.

``EGNNBaseline`` (``baseline="egnn"``) is the E(n)-equivariant graph network of Satorras, Hoogeboom and Welling
(2021), written from the paper's equations: its n-body model (§5.1; messages over the fully connected graph of a
sample's tokens, charge products as edge attributes, the velocity-form coordinate update), O(N²) and one process.
It is the pairwise-message model docs/design.md §2.4 compares SE(3)-Hyena against.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_hyena.config import HyenaConfig
from dist_hyena.model import SE3HyenaModel, _check_inputs, subtract_centroid


class LinearBaseline(nn.Module):
    """``forward(x [B, N, vector_in, 3], f [B, N, scalar_in])`` -> the outputs of ``SE3HyenaModel`` (same shapes)."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        if cfg.vector_in < 1:
            raise ValueError("LinearBaseline maps input vectors: HyenaConfig.vector_in must be >= 1")
        self.cfg = cfg
        self.token_weight = nn.Parameter(torch.zeros(cfg.vector_out, cfg.vector_in))  # a: x_i[c] -> output
        self.mean_weight = nn.Parameter(torch.zeros(cfg.vector_out, cfg.vector_in))  # b: mean_j x_j[c] -> output
        mask = torch.ones(cfg.vector_in)
        mask[list(cfg.position_channels)] = 0.0  # the mean of a centred position is zero: no parameter for it
        self.register_buffer("mean_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        pos = list(cfg.position_channels)
        centroid = x[:, :, pos].sum(dim=1, dtype=torch.float64) / x.shape[1] if pos else None  # [B, P, 3]
        if pos:
            x = subtract_centroid(x, pos, centroid)
        mean = x.mean(dim=1, keepdim=True)  # [B, 1, C, 3]
        from_mean = torch.einsum("oc,bncd->bnod", self.mean_weight * self.mean_mask, mean)
        if cfg.head == "recall":
            return from_mean[:, 0], x.new_zeros(x.shape[0], cfg.scalar_out)
        update = torch.einsum("oc,bncd->bnod", self.token_weight, x) + from_mean
        out = (x[:, :, pos[0], None] + update).double() + centroid[:, None, :1]
        return out.to(x.dtype), x.new_zeros(*x.shape[:2], cfg.scalar_out)


def _mlp(n_in: int, hidden: int, n_out: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out, bias=bias))


class _EGNNLayer(nn.Module):
    """One E(n)-equivariant layer (Satorras et al. 2021, eqs. 3-7 with the velocity form of eq. 7).

    ``h [B, N, H]`` node features, ``x [B, N, 3]`` coordinates, ``v [B, N, V, 3]`` the input velocities (fixed
    across layers, as in eq. 7), ``a [B, N, N, E]`` edge attributes -> ``(h', x_out [B, N, K, 3])``; K = ``n_out``
    coordinate heads (1 in every layer but the last, which has ``HyenaConfig.vector_out``)::

        m_ij   = φ_e(h_i, h_j, |x_i − x_j|², a_ij)                       (j ≠ i)
        x_i,k  ← x_i + C Σ_j (x_i − x_j) φ_x,k(m_ij) + Σ_c φ_v,kc(h_i) v_i,c,   C = 1 / (N − 1)
        h_i    ← h_i + φ_h(h_i, Σ_j m_ij)

    The first linear map of φ_e acts on a concatenation; it is applied per part (per node for h_i and h_j, per
    pair only for the two edge inputs), the same map without the [B, N, N, 2H + 1 + E] tensor.
    """

    def __init__(self, hidden: int, n_edge: int, n_vel: int, n_out: int):
        super().__init__()
        self.n_vel, self.n_out = n_vel, n_out
        self.edge_i = nn.Linear(hidden, hidden)  # φ_e's first layer, the h_i block (carries the bias)
        self.edge_j = nn.Linear(hidden, hidden, bias=False)  # ... the h_j block
        self.edge_pair = nn.Linear(1 + n_edge, hidden, bias=False)  # ... |x_i − x_j|² and a_ij
        self.edge_out = nn.Linear(hidden, hidden)
        self.coord = _mlp(hidden, hidden, n_out, bias=False)  # φ_x
        self.vel = _mlp(hidden, hidden, n_out * n_vel) if n_vel else None  # φ_v
        self.node = _mlp(2 * hidden, hidden, hidden)  # φ_h
        with torch.no_grad():  # the coordinate update starts near zero: x^L ≈ x^0 + Σ φ_v v at initialisation
            self.coord[-1].weight.mul_(1e-3)

    def forward(self, h, x, v, a, off_diagonal):
        b, n, _ = h.shape
        diff = x[:, :, None] - x[:, None, :]  # [B, N, N, 3]: x_i − x_j
        radial = diff.square().sum(-1, keepdim=True)
        pre = self.edge_i(h)[:, :, None] + self.edge_j(h)[:, None, :] + self.edge_pair(torch.cat([radial, a], -1))
        m = nn.functional.silu(self.edge_out(nn.functional.silu(pre))) * off_diagonal  # m_ii = 0: sums over j ≠ i
        weight = self.coord(m) * off_diagonal  # [B, N, N, K]
        update = torch.einsum("bijk,bijd->bikd", weight, diff) / max(n - 1, 1)
        if self.vel is not None:
            update = update + torch.einsum("bikc,bicd->bikd", self.vel(h).view(b, n, self.n_out, self.n_vel), v)
        h = h + self.node(torch.cat([h, m.sum(2)], -1))
        return h, x[:, :, None] + update


class EGNNBaseline(nn.Module):
    """EGNN (Satorras, Hoogeboom, Welling 2021, "E(n) Equivariant Graph Neural Networks"), its n-body model (§5.1).

    ``forward(x [B, N, vector_in, 3], f [B, N, scalar_in])`` -> the outputs of ``SE3HyenaModel`` (same shapes).
    A fully connected graph over the N tokens of a sample (O(N²) time and memory: a one-process baseline),
    ``n_blocks`` layers of :class:`_EGNNLayer`, hidden size ``hidden_width``, SiLU activations.

    Inputs. Coordinates x_i: the first position channel, centred (float64 centroid, ``subtract_centroid``); without
    position channels (the recall head) vector channel 0, uncentred. Every other vector channel — velocities and
    further (centred, so translation-invariant) position channels — is a "velocity" v_i,c of eq. 7, each with its
    own φ_v coefficient. Node features h_i = a linear embedding of (|v_i,c| for every such channel, the scalars
    f_i): for n-body the velocity norm, as the paper, and the charge. Edge attributes a_ij = (f_i ⊙ f_j,
    |x_i − x_j|² of the input): for n-body the paper's charge product q_i q_j and, as the authors' n-body setup,
    the initial squared distance.

    Outputs. n-body: x_out[i, k] = the final coordinates of head k (the last layer has ``vector_out`` coordinate
    heads), plus the centroid; recall: the token mean of the final coordinates, [B, vector_out, 3]. Scalar
    outputs: a linear map of the final h (n-body per token, recall of its token mean), invariant. The model is
    E(3)-equivariant (rotations, reflections; translations of the position channel) and permutation-equivariant.
    """

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        if cfg.vector_in < 1:
            raise ValueError("EGNNBaseline moves coordinates: HyenaConfig.vector_in must be >= 1")
        self.cfg = cfg
        self.coord_channel = cfg.position_channels[0] if cfg.position_channels else 0
        self.vel_channels = [c for c in range(cfg.vector_in) if c != self.coord_channel]
        hidden, n_vel = cfg.hidden_width, len(self.vel_channels)
        if n_vel + cfg.scalar_in == 0:
            raise ValueError("EGNNBaseline needs node features: a second vector channel or a scalar input")
        self.embed = nn.Linear(n_vel + cfg.scalar_in, hidden)
        self.layers = nn.ModuleList(
            _EGNNLayer(hidden, cfg.scalar_in + 1, n_vel, cfg.vector_out if i == cfg.n_blocks - 1 else 1)
            for i in range(cfg.n_blocks))
        self.scalar_head = nn.Linear(hidden, cfg.scalar_out)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        _check_inputs(cfg, x, f, self.embed.weight.dtype)
        pos = list(cfg.position_channels)
        centroid = x[:, :, pos].sum(dim=1, dtype=torch.float64) / x.shape[1] if pos else None  # [B, P, 3]
        if pos:
            x = subtract_centroid(x, pos, centroid)
        n = x.shape[1]
        coords, vel = x[:, :, self.coord_channel], x[:, :, self.vel_channels]
        h = self.embed(torch.cat([vel.norm(dim=-1), f], -1))
        radial0 = (coords[:, :, None] - coords[:, None, :]).square().sum(-1, keepdim=True)
        a = torch.cat([f[:, :, None] * f[:, None, :], radial0], -1)  # [B, N, N, S + 1]
        off_diagonal = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)[None, :, :, None]
        for layer in self.layers:
            h, out = layer(h, coords, vel, a, off_diagonal)
            coords = out[:, :, 0]
        if cfg.head == "recall":
            return out.mean(dim=1), self.scalar_head(h.mean(dim=1))
        out = (out.double() + centroid[:, None, :1]).to(x.dtype)
        return out, self.scalar_head(h)


def build_model(cfg: HyenaConfig, mesh=None) -> nn.Module:
    """The model ``cfg`` describes: ``LinearBaseline`` for ``baseline="linear"``, ``EGNNBaseline`` for
    ``baseline="egnn"``, else ``SE3HyenaModel``."""
    baselines = {"linear": LinearBaseline, "egnn": EGNNBaseline}
    if cfg.baseline is not None:
        if mesh is not None and mesh.sp > 1:
            raise ValueError(f"baseline={cfg.baseline!r} is a one-process baseline; sequence parallelism needs "
                             "SE3HyenaModel with mixer='hyena'")
        return baselines[cfg.baseline](cfg)
    return SE3HyenaModel(cfg, mesh=mesh)
