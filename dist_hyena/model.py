"""SE(3)-Hyena (docs/design.md §2.1): operator, block and model with the n-body and recall heads.

Data layout everywhere: vectors ``[B, N, C, 3]``, scalars ``[B, N, D]``; dim 1 is the token
dim. Under sequence parallelism each rank holds a contiguous block of tokens; the only
places where tokens meet are the long convolution and the token means (centroid,
mean-pool), so those are the only places where the mesh appears.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import DistanceAttention, VectorAttention
from .config import HyenaConfig
from .local_context import LocalContext
from .nn import VectorScalarMLP
from .ops import circular_conv, cross_conv

# Mixers: the operator's global context. Every mixer is called alike,
#     mixer(q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, counts) -> (u_eqv [B, n, Cv, 3], u_inv [B, n, D])
# on this rank's token block (``q/k/v_eqv [B, n, Cv, 3]``, ``q/k/v_inv [B, n, D]``, ``counts`` every SP rank's token
# count or None). The long convolutions filter q by k and leave the values to the operator; attention weighs them.


class LocalConv(nn.Module):
    """The global context of one process: FFT convolutions over the whole sequence (values unused)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, counts=None):
        return cross_conv(q_eqv, k_eqv, self.mode), circular_conv(q_inv, k_inv, self.mode)


def mlp(cfg: HyenaConfig, vectors_in: int, scalars_in: int, vectors_out: int, scalars_out: int,
        hidden: int | None = None, linear_path: bool = False) -> VectorScalarMLP:
    """A token-wise Clifford MLP of the model (``hidden_width`` wide unless told), with the config's options."""
    return VectorScalarMLP(vectors_in, scalars_in, vectors_out, scalars_out, hidden or cfg.hidden_width,
                           cfg.mlp_layers, cfg.mlp_token_chunk, layer_norm=cfg.layer_norm, linear_path=linear_path,
                           gate_invariant=cfg.gate_invariant)


class NoContext(nn.Module):
    """No global mixing (``mixer="none"``, an ablation): the context is zero, the block is token-wise."""

    def forward(self, q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, counts=None):
        return torch.zeros_like(q_eqv), torch.zeros_like(q_inv)


def _global_context(cfg: HyenaConfig, mesh) -> nn.Module:
    if cfg.baseline is not None:
        raise ValueError(f"baseline={cfg.baseline!r} is a model of its own, not a part of SE3HyenaModel: build it "
                         "with dist_hyena.baselines.build_model")
    if cfg.mixer in ("attention", "sdpa"):
        if mesh is not None and mesh.sp > 1:
            raise ValueError(f"mixer={cfg.mixer!r} is a one-process attention baseline; "
                             "sequence parallelism (sp > 1) needs mixer='hyena'")
        return DistanceAttention(cfg.conv_mode) if cfg.mixer == "sdpa" else VectorAttention(cfg.conv_mode)
    if cfg.mixer == "none":
        return NoContext()
    if mesh is None:
        return LocalConv(cfg.conv_mode)
    from .parallel import SequenceParallelConv

    return SequenceParallelConv(mesh, cfg.vector_width, cfg.scalar_width, cfg.conv_mode, cfg.sp_strategy)


def token_counts(n_local: int, device: torch.device, mesh=None) -> list[int]:
    """Every SP rank's token count (one process: ``[n_local]``): one tiny all-reduce under SP, on the input's
    device as NCCL needs. The model asks once per forward and hands the counts to its blocks."""
    return [n_local] if mesh is None else mesh.token_counts(n_local, device=device)


def token_mean(t: torch.Tensor, n_total: int, mesh=None) -> torch.Tensor:
    """``[B, n, ...] -> [B, ...]``: the mean over all tokens of the sample, across the SP group. Accumulated and
    returned in float64: a float32 sum of many far-from-origin positions would lose the digits that translation
    invariance depends on."""
    total = t.sum(dim=1, dtype=torch.float64)
    if mesh is not None:
        from .parallel import sp_all_reduce

        total = sp_all_reduce(total, mesh)
    return total / n_total


def last_token(t: torch.Tensor, mesh=None) -> torch.Tensor:
    """``[B, n, ...] -> [B, ...]``: the sample's last token (global index N - 1, on the last SP rank), on every
    rank (one all-reduce). The other ranks send their last token times 0, not a constant zero, so that their
    backward still runs through the blocks' collectives, which every rank must join."""
    if mesh is None or mesh.sp == 1:
        return t[:, -1]
    from .parallel import sp_all_reduce

    return sp_all_reduce(t[:, -1] * float(mesh.sp_rank == mesh.sp - 1), mesh)


_CONTEXT_EPS = 1e-12


def normalise_context(u_eqv: torch.Tensor, u_inv: torch.Tensor, n_total: int, mesh=None):
    """Each context channel divided by its root-mean-square over the sample's tokens (``context_norm``): an
    invariant per (sample, channel), so equivariance holds; the context of one token broadcast to all (1/N of it
    reaches each) and a mean over all tokens then have the same scale at every length."""
    ms_eqv = token_mean(u_eqv.square().sum(dim=-1), n_total, mesh)  # [B, Cv]
    ms_inv = token_mean(u_inv.square(), n_total, mesh)  # [B, D]
    scale_eqv, scale_inv = ((m + _CONTEXT_EPS).rsqrt().to(u_eqv.dtype) for m in (ms_eqv, ms_inv))
    return u_eqv * scale_eqv[:, None, :, None], u_inv * scale_inv[:, None]


class HyenaOperator(nn.Module):
    """The paper's Algorithm 1 on the residual stream (vectors ``[B, n, Cv, 3]``, scalars ``[B, n, D]``).
    ``counts``: every SP rank's token count (asked of the mesh when not given)."""

    def __init__(self, cfg: HyenaConfig, mesh=None):
        super().__init__()
        self.cv, self.d = cfg.vector_width, cfg.scalar_width
        cv, d = self.cv, self.d
        self.project_in = mlp(cfg, cv, d, 3 * cv, 3 * d)
        self.source_gate = cfg.source_gate
        self.gate = mlp(cfg, cv, d, 0, (cv + d) * (2 if cfg.source_gate else 1), cfg.gate_width)
        self.project_out = mlp(cfg, cv, d, cv, d)
        self.context = _global_context(cfg, mesh)
        self.context_norm, self.mesh = cfg.context_norm, mesh

    def forward(self, x: torch.Tensor, f: torch.Tensor,
                counts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        counts = counts or token_counts(x.shape[1], x.device, self.mesh)
        vectors, scalars = self.project_in(x, f)
        q_eqv, k_eqv, v_eqv = vectors.chunk(3, dim=2)
        q_inv, k_inv, v_inv = scalars.chunk(3, dim=2)
        # The gates read only the scalar blade, so they are invariant and keep the vector streams equivariant.
        _, gates = self.gate(x, f)
        if self.source_gate:
            gates, source = gates.chunk(2, dim=-1)
            source = torch.relu(source)
            q_eqv, q_inv = q_eqv * source[..., : self.cv, None], q_inv * source[..., self.cv :]
        u_eqv, u_inv = self.context(q_eqv, k_eqv, v_eqv, q_inv, k_inv, v_inv, counts)
        if self.context_norm:
            u_eqv, u_inv = normalise_context(u_eqv, u_inv, sum(counts), self.mesh)
        u_eqv = torch.sigmoid(gates[..., : self.cv, None]) * u_eqv
        u_inv = torch.sigmoid(gates[..., self.cv :]) * u_inv
        return self.project_out(x + torch.linalg.cross(u_eqv, v_eqv, dim=-1), f + u_inv * v_inv)


class HyenaBlock(nn.Module):
    """[local context -> residual add ->] operator -> residual add -> equivariant MLP -> residual add.

    ``pos`` (the centred input positions ``[B, n, P, 3]``, or None) is read by the local context only;
    ``counts``: every SP rank's token count (asked of the mesh when not given)."""

    def __init__(self, cfg: HyenaConfig, mesh=None):
        super().__init__()
        self.cv, self.d = cfg.vector_width, cfg.scalar_width
        if cfg.local_window:
            self.local = LocalContext(cfg.local_window, cfg.conv_mode, self.cv, self.d,
                                      len(cfg.position_channels), cfg.local_hidden, mesh, cfg.mlp_token_chunk,
                                      cfg.local_cutoff)
        self.operator = HyenaOperator(cfg, mesh)
        self.mlp = mlp(cfg, self.cv, self.d, self.cv, self.d)
        self.mesh = mesh

    def forward(self, x: torch.Tensor, f: torch.Tensor, pos: torch.Tensor | None = None,
                counts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        counts = counts or token_counts(x.shape[1], x.device, self.mesh)
        if hasattr(self, "local"):
            dx, df = self.local(x, f, pos, counts)
            x, f = x + dx, f + df
        dx, df = self.operator(x, f, counts)
        x, f = x + dx, f + df
        dx, df = self.mlp(x, f)
        return x + dx, f + df


def _check_inputs(cfg: HyenaConfig, x: torch.Tensor, f: torch.Tensor, dtype: torch.dtype) -> None:
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"vector input x must be [B, N, C, 3] (a 3-vector per channel), got shape {tuple(x.shape)}")
    if x.shape[2] != cfg.vector_in:
        raise ValueError(f"vector input x has {x.shape[2]} channels, the config says vector_in={cfg.vector_in}")
    if f.dim() != 3 or f.shape[2] != cfg.scalar_in:
        raise ValueError(f"scalar input f must be [B, N, {cfg.scalar_in}] (scalar_in), got shape {tuple(f.shape)}")
    if f.shape[:2] != x.shape[:2]:
        raise ValueError(f"x and f disagree on [B, N]: {tuple(x.shape[:2])} vs {tuple(f.shape[:2])}")
    if x.shape[1] == 0:
        raise ValueError("the input has no tokens (N = 0)")
    for name, t in (("x", x), ("f", f)):
        if t.dtype != dtype:
            raise TypeError(f"input {name} has dtype {t.dtype}, the model's parameters are {dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"input {name} contains NaN or Inf")


def subtract_centroid(x: torch.Tensor, pos: list[int], centroid: torch.Tensor) -> torch.Tensor:
    """``x [B, N, C, 3]`` with its position channels ``pos`` moved by ``-centroid`` (``[B, P, 3]``, float64),
    subtracted in float64: positions far from the origin keep the digits translation invariance depends on."""
    shift = torch.zeros_like(x, dtype=torch.float64)
    shift[:, :, pos] = centroid[:, None]
    return (x.double() - shift).to(x.dtype)


class SE3HyenaModel(nn.Module):
    """SE(3)-Hyena: input embedding -> ``n_blocks`` blocks -> head.

    ``forward(x [B, n, vector_in, 3], f [B, n, scalar_in])`` on this rank's token block returns
    - head ``nbody``:  ``(x_out [B, n, vector_out, 3], f_out [B, n, scalar_out])``, x_out the
      predicted positions (the input position channel plus a learned equivariant update);
    - head ``recall``: ``(x_out [B, vector_out, 3], f_out [B, scalar_out])`` from the token mean.
    With a ``mesh`` (sequence parallelism) the results equal the one-process ones on the block.
    """

    def __init__(self, cfg: HyenaConfig | None = None, mesh=None):
        super().__init__()
        self.cfg = cfg = cfg or HyenaConfig()
        self.mesh = mesh
        cv, d = cfg.vector_width, cfg.scalar_width
        self.embed_in = mlp(cfg, cfg.vector_in, cfg.scalar_in, cv, d, linear_path=cfg.linear_path)
        self.blocks = nn.ModuleList(HyenaBlock(cfg, mesh) for _ in range(cfg.n_blocks))
        self.head = mlp(cfg, cv, d, cfg.vector_out, cfg.scalar_out, linear_path=cfg.linear_path)
        if cfg.zero_update and cfg.head == "nbody":  # an untrained model predicts the input positions
            with torch.no_grad():
                for layer in (self.head.mlp.net[-1], self.head.mlp.skip):
                    for p in () if layer is None else layer.parameters():
                        p.zero_()

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        _check_inputs(cfg, x, f, self.head.mlp.net[-1].weight.dtype)
        counts = token_counts(x.shape[1], x.device, self.mesh)
        n_total = sum(counts)
        pos = list(cfg.position_channels)
        centroid = None
        if pos:
            centroid = token_mean(x[:, :, pos], n_total, self.mesh)  # [B, P, 3]
            x = subtract_centroid(x, pos, centroid)
        geometry = (x[:, :, pos] if pos and cfg.local_window else None, counts)
        stream_in = x if cfg.positions_in_stream else x.index_fill(2, torch.tensor(pos, device=x.device), 0.0)
        h_x, h_f = self.embed_in(stream_in, f)
        for block in self.blocks:
            if cfg.activation_checkpointing and self.training:
                h_x, h_f = checkpoint(block, h_x, h_f, *geometry, use_reentrant=False)
            else:
                h_x, h_f = block(h_x, h_f, *geometry)
        if cfg.head == "recall":
            if cfg.recall_readout == "query":
                h_x, h_f = (last_token(h, self.mesh)[:, None] for h in (h_x, h_f))
            else:
                h_x, h_f = (token_mean(h, n_total, self.mesh)[:, None].to(h.dtype) for h in (h_x, h_f))
        out_x, out_f = self.head(h_x, h_f)
        if cfg.head == "recall":
            return out_x[:, 0], out_f[:, 0]
        # Predicted positions: the (centred) input position plus the update, moved back by the centroid.
        position = x[:, :, pos[0], None].double() + centroid[:, None, :1]
        return (out_x.double() + position).to(out_x.dtype), out_f
