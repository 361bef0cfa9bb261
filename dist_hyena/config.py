"""Model configuration. The defaults reproduce the paper's n-body model (docs/design.md §2.1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .nn.clifford import GATE_INVARIANTS
from .ops import CONV_MODES
from .parallel.conv import STRATEGIES

HEADS = ("nbody", "recall")
MIXERS = ("hyena", "attention", "sdpa", "none")
BASELINES = ("linear", "egnn")
SP_STRATEGIES = STRATEGIES  # the sequence-parallel convolution's own list
RECALL_READOUTS = ("mean", "query")
# A field with this metadata is an execution setting: it changes how, not what, the model computes (the same
# parameters, outputs equal within round-off), so a checkpoint does not fix it. Every other field is architecture.
EXECUTION = {"execution": True}


@dataclass
class HyenaConfig:
    """SE(3)-Hyena hyperparameters.

    Streams between blocks: ``vector_width`` vector channels ``[B, N, Cv, 3]`` and
    ``scalar_width`` scalars ``[B, N, D]``. Clifford MLPs are ``hidden_width`` multivector
    channels wide (the gating MLP ``gate_width``). ``mixer``: ``hyena`` (FFT long convolution), ``attention``
    (the paper's O(N²) vector attention) or ``sdpa`` (invariant-distance attention on
    ``scaled_dot_product_attention``, never N x N in memory) or ``none`` (no global mixing: the operator's
    context is zero, an ablation); every mixer is called alike (``dist_hyena.model``, "Mixers").
    ``baseline`` (default None: SE(3)-Hyena) selects a whole other model instead: ``linear`` (the paper's linear
    baseline, an equivariant linear map of the input vectors, ``dist_hyena.baselines.LinearBaseline``) or ``egnn``
    (an E(n)-equivariant graph network, Satorras et al. 2021, over the fully connected graph of a sample's tokens,
    ``n_blocks`` layers of width ``hidden_width``, ``dist_hyena.baselines.EGNNBaseline``); both are one-process
    models; build models with ``dist_hyena.baselines.build_model``. ``mixer="linear"`` or ``"egnn"``, the spelling
    of configs saved before ``baseline`` existed, is read as that baseline.
    ``linear_path``: the input embedding and the head add an equivariant linear map of their input to the
    Clifford MLP's output (the MLP alone is layer-normed, so its output cannot grow with its input).
    ``layer_norm``: the Clifford MLPs' layer norm (the paper's; off is an ablation). ``gate_invariant``: what
    the gated nonlinearities read of each non-scalar grade, its ``norm`` (ours) or its ``squared_norm`` (the
    reference implementation's; an ablation).
    Execution settings (``sp_strategy``, ``activation_checkpointing``, ``mlp_token_chunk``; ``EXECUTION_KEYS``)
    change how, not what, is computed; a checkpoint fixes only the rest, the architecture (``architecture()``).
    ``mlp_token_chunk``: when set, every
    MLP runs that many tokens at a time and keeps only its compact input for backward, recomputing itself
    chunk by chunk there (``VectorScalarMLP``); it also token-chunks the local context.
    ``local_window`` (w, default 0): every block adds the local geometric context (docs/design.md §2.4,
    ``dist_hyena.local_context``) over the w sequence neighbours on each side (``causal``: before) before its
    operator; 0 is exactly the paper's model (same parameters, same outputs). ``local_hidden``: the width of its
    pair MLP (an ordinary MLP of invariants, far cheaper per unit of width than a Clifford MLP).
    ``context_norm`` (default False, the paper's operator): the global context ``u`` is divided, per sample and
    channel, by its root-mean-square over all tokens, so a context broadcast from one token and a mean over all
    tokens keep their scale at every length (circular mode only: the norm reads every token).
    ``recall_readout``: what the recall head reads, ``mean`` (the token mean, the paper's) or ``query`` (the
    sample's last token, the query: a read-out whose weight does not fall as 1/N with the length).
    ``source_gate`` (default False, the paper's operator): each operator multiplies its ``q`` streams, channel by
    channel, by the ReLU of a learned invariant of the token (more outputs of the gating MLP) before the long
    convolution. A token whose gate is negative adds exactly nothing to the context, at any length, where a
    sigmoid-gated or ungated token always adds a little: the sum of those leaks grows with N.
    ``local_cutoff`` (default None: every tap counts): a tap's message is weighted by a smooth cosine envelope of
    the distance between the two tokens' positions (first position channel), 1 at 0 and 0 from the cutoff on, so
    sequence neighbours far apart in space (consecutive water molecules of a topology) add nothing; in the data's
    length unit. ``positions_in_stream`` (default True, the paper's): the centred input positions are one of the
    stream's input vectors; False keeps them out of it (they reach the local context only, as relative vectors
    p_j - p_i), so the stream carries no absolute position: with ``linear_path`` an update built from local
    structure reaches the head unnormalised, and the untrained model predicts the input positions when no other
    vector is an input. Needs ``local_window > 0``.
    ``zero_update`` (default False): the n-body head's last linear map (and linear path) starts at zero, so an
    untrained model predicts the input positions (the static reference) and training moves it from there.
    ``position_channels`` are the input vector
    channels that are positions: the model centres them and adds the centroid back to the
    predicted positions; other vectors (velocities) are translation-invariant.
    """

    head: str = "nbody"
    mixer: str = "hyena"
    baseline: str | None = None
    conv_mode: str = "circular"
    sp_strategy: str = field(default="auto", metadata=EXECUTION)
    n_blocks: int = 2
    vector_in: int = 2
    scalar_in: int = 1
    vector_width: int = 1
    scalar_width: int = 8
    hidden_width: int = 16
    gate_width: int = 8
    mlp_layers: int = 1
    vector_out: int = 1
    scalar_out: int = 1
    position_channels: tuple[int, ...] = field(default=(0,))
    activation_checkpointing: bool = field(default=False, metadata=EXECUTION)
    mlp_token_chunk: int | None = field(default=None, metadata=EXECUTION)
    linear_path: bool = False
    layer_norm: bool = True
    gate_invariant: str = "norm"
    local_window: int = 0
    local_hidden: int = 64
    local_cutoff: float | None = None
    context_norm: bool = False
    recall_readout: str = "mean"
    source_gate: bool = False
    zero_update: bool = False
    positions_in_stream: bool = True

    def __post_init__(self):
        self.position_channels = tuple(self.position_channels)
        if self.mixer in BASELINES and self.baseline is None:  # a config saved when baselines were mixers
            self.mixer, self.baseline = "hyena", self.mixer
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ValueError(f"HyenaConfig.baseline must be None or one of {BASELINES}, got {self.baseline!r}")
        for name, allowed in (("head", HEADS), ("mixer", MIXERS), ("conv_mode", CONV_MODES),
                              ("sp_strategy", SP_STRATEGIES), ("recall_readout", RECALL_READOUTS),
                              ("gate_invariant", GATE_INVARIANTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"HyenaConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_blocks", "vector_width", "scalar_width", "hidden_width", "gate_width", "mlp_layers",
                     "vector_out", "local_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"HyenaConfig.{name} must be a positive integer, got {value!r}")
        for name in ("vector_in", "scalar_in", "scalar_out", "local_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"HyenaConfig.{name} must be a non-negative integer, got {value!r}")
        chunk = self.mlp_token_chunk
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"HyenaConfig.mlp_token_chunk must be None or a positive integer, got {chunk!r}")
        if self.vector_in + self.scalar_in == 0:
            raise ValueError("HyenaConfig needs at least one input channel (vector_in + scalar_in > 0)")
        bad = [c for c in self.position_channels if not 0 <= c < self.vector_in]
        if bad:
            raise ValueError(f"HyenaConfig.position_channels {bad} out of range for vector_in={self.vector_in}")
        if self.context_norm and self.conv_mode == "causal":
            raise ValueError("HyenaConfig.context_norm normalises over every token of the sample, which a causal "
                             "model must not read: use conv_mode='circular' or context_norm=False")
        if self.local_cutoff is not None and not (isinstance(self.local_cutoff, (int, float))
                                                  and self.local_cutoff > 0 and self.position_channels):
            raise ValueError(f"HyenaConfig.local_cutoff must be None or a positive distance with a position "
                             f"channel, got {self.local_cutoff!r} (position_channels={self.position_channels})")
        if not self.positions_in_stream and not (self.local_window and self.position_channels):
            raise ValueError("HyenaConfig.positions_in_stream=False keeps the positions out of the stream; only the "
                             "local context would see them: set local_window > 0 (and a position channel)")
        if self.head == "nbody" and not self.position_channels:
            raise ValueError("the nbody head predicts positions: HyenaConfig.position_channels must name one")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["position_channels"] = list(self.position_channels)
        return d

    def architecture(self) -> dict:
        """What a checkpoint and an exported model fix: every field but the execution settings."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_KEYS}

    def execution(self) -> dict:
        """How the model is computed (sequence-parallel strategy, activation checkpointing, token chunks): free to
        change between the jobs of a run and when loading an exported model."""
        return {k: v for k, v in self.to_dict().items() if k in EXECUTION_KEYS}


EXECUTION_KEYS = tuple(f.name for f in dataclasses.fields(HyenaConfig) if f.metadata.get("execution"))


def architecture_difference(saved: dict, current: HyenaConfig) -> dict:
    """{key: (saved, current)} for the architecture keys where a saved model config (any older ``to_dict()``, whose
    missing keys mean their defaults, and whose execution keys are ignored) differs from ``current``."""
    if saved.get("mixer") in BASELINES and saved.get("baseline") is None:  # spelled as a mixer before baselines
        saved = {**saved, "mixer": "hyena", "baseline": saved["mixer"]}
    defaults = HyenaConfig().to_dict()
    mine = current.architecture()
    return {k: (saved.get(k, defaults[k]), mine[k]) for k in mine if saved.get(k, defaults[k]) != mine[k]}
