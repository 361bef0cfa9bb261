"""Equivariant associative recall (docs/design.md §4.2), at any length.

A sample is a sequence of (key, value) vector bigrams followed by a query key; the target
is the value paired with that key earlier (always present). Vocabulary vectors have
directions uniform on the sphere and magnitudes U[1, vocab_size]. Within a sequence each
key id maps to one value id. Variants: `random` draws a new vocabulary per sequence;
`fixed` uses one vocabulary (from the dataset seed) and rotates each sequence at random.
An even length starts with one zero-vector pad token (a zero vector is rotation-invariant
and carries nothing), so any length >= 3 works and sequence-parallel splits stay even.

The invariant input is a 16-d sinusoidal encoding (`positions`) of each token's index i (`index`, the paper's),
of its distance to the query N - 1 - i (`from_end`), of its signed circular offset from token 0, i or i - N in
the second half (`signed`: the offsets a circular convolution pairs, (i - j) mod N, then have the same encoding
at every length for |i - j| < N / 2), or of its distance to the query clipped at QUERY_WINDOW plus its parity
(`near_query`: no token of a longer sequence has an encoding unseen at a shorter one). What each does for a
model read at other lengths than its training length: benchmarks/README.md §7.
"""

from __future__ import annotations

import functools

import numpy as np

from dist_hyena.data.layout import ArraySpec, sample_rng

VARIANTS = ("random", "fixed")
POSITIONS = ("index", "from_end", "signed", "near_query")
POSITION_DIM = 16


def random_vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, 3]: directions uniform on the sphere, magnitudes U[1, size]."""
    v = rng.standard_normal((size, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * rng.uniform(1.0, size, size=(size, 1))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A Haar-uniform rotation [3, 3] (det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def sinusoids(i: np.ndarray, dim: int = POSITION_DIM, base: float = 10000.0) -> np.ndarray:
    """Sinusoidal encoding of positions ``i`` (any reals) -> [len(i), dim] float32: pairs (sin, cos) of
    i / base^(2k/dim)."""
    i = np.asarray(i, dtype=np.float64)[:, None]
    freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    enc = np.empty((len(i), dim))
    enc[:, 0::2] = np.sin(i * freq)
    enc[:, 1::2] = np.cos(i * freq)
    return enc.astype(np.float32)


@functools.lru_cache(maxsize=8)  # a loader asks for the same token block every batch
def position_encoding(start: int, stop: int, dim: int = POSITION_DIM, base: float = 10000.0) -> np.ndarray:
    """Sinusoidal encoding of global token indices [start, stop) -> [stop - start, dim]
    float32 (read-only: it is shared)."""
    enc = sinusoids(np.arange(start, stop), dim, base)
    enc.flags.writeable = False
    return enc


QUERY_WINDOW = 12  # near_query: distances to the query up to this are told apart, farther ones share one code


@functools.lru_cache(maxsize=8)
def near_query_encoding(n_tokens: int, start: int, stop: int) -> np.ndarray:
    """``positions="near_query"`` (read-only): the distance d = N - 1 - i to the query, clipped at QUERY_WINDOW, in
    POSITION_DIM - 2 sinusoids, then cos(pi d) and sin(pi d / 2) (a key's distance is even, a value's odd).
    Every token of every length has an encoding that a training length > QUERY_WINDOW already holds."""
    d = n_tokens - 1 - np.arange(start, stop)
    enc = np.concatenate([sinusoids(np.minimum(d, QUERY_WINDOW), POSITION_DIM - 2),
                          np.stack([np.cos(np.pi * d), np.sin(np.pi * d / 2)], axis=1).astype(np.float32)], axis=1)
    enc.flags.writeable = False
    return enc


def invariant_input(n_tokens: int, positions: str, start: int, stop: int) -> np.ndarray:
    """The invariant input of tokens [start, stop) of an n_tokens sequence under the encoding ``positions``
    (one of POSITIONS, see the module docstring): [stop - start, POSITION_DIM], read-only."""
    if positions == "index":
        return position_encoding(start, stop)
    if positions == "near_query":
        return near_query_encoding(n_tokens, start, stop)
    if positions == "signed":  # i for the first half, i - N for the second: the circular offset from token 0
        half = (n_tokens + 1) // 2
        parts = [position_encoding(a, b) for a, b in ((start, min(stop, half)), (max(start, half) - n_tokens,
                                                                                 stop - n_tokens)) if b > a]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    last = n_tokens - 1
    return position_encoding(last - stop + 1, last - start + 1)[::-1]


class RecallTask:
    """Makes recall samples: tokens [b, N, 3] and target [b, 3]."""

    task = "recall"

    def __init__(self, n_tokens: int, seed: int, vocab_size: int = 4, variant: str = "random",
                 positions: str = "index"):
        if n_tokens < 3:
            raise ValueError(f"n_tokens must be >= 3 (a pair and a query), got {n_tokens}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.n_tokens, self.seed, self.vocab_size, self.variant = n_tokens, seed, vocab_size, variant
        self.positions = positions
        # The fixed vocabulary depends on the seed only, never on split or sample.
        self.fixed_vocab = random_vocabulary(np.random.default_rng([seed, 1 << 20]), vocab_size)

    def attrs(self) -> dict:
        return {
            "task": self.task,
            "generator": "dist_hyena.data.recall_task",
            "params": {"n_tokens": self.n_tokens, "vocab_size": self.vocab_size, "variant": self.variant,
                       **({"positions": self.positions} if self.positions != "index" else {})},
            "n_tokens": self.n_tokens,
            "vector_in": 1,
            "scalar_in": POSITION_DIM,
            "token_order": "index",
            "position_encoding": {"dim": POSITION_DIM, "base": 10000.0, "of": self.positions},
        }

    def encoding(self, start: int, stop: int) -> np.ndarray:
        return invariant_input(self.n_tokens, self.positions, start, stop)

    def array_specs(self, tokens_per_chunk: int) -> list[ArraySpec]:
        return [
            ArraySpec("tokens", (self.n_tokens, 3), (tokens_per_chunk, 3), token_axis=1),
            ArraySpec("target", (3,), (3,)),
        ]

    def sample(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One sequence -> tokens [N, 3], target [3] (float32)."""
        rng = sample_rng(self.seed, split, index)
        v = self.vocab_size
        if self.variant == "random":
            vocab = random_vocabulary(rng, v)
        else:
            vocab = self.fixed_vocab @ random_rotation(rng).T
        n_pairs = (self.n_tokens - 1) // 2
        value_of = rng.integers(0, v, size=v)  # this sequence's key -> value map
        keys = rng.integers(0, v, size=n_pairs)
        query = keys[rng.integers(0, n_pairs)]
        tokens = np.zeros((self.n_tokens, 3))
        pad = self.n_tokens - 1 - 2 * n_pairs
        tokens[pad:-1:2] = vocab[keys]
        tokens[pad + 1 : -1 : 2] = vocab[value_of[keys]]
        tokens[-1] = vocab[query]
        return tokens.astype(np.float32), vocab[value_of[query]].astype(np.float32)

    def generate(self, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
        samples = [self.sample(split, i) for i in range(start, stop)]
        return {"tokens": np.stack([s[0] for s in samples]), "target": np.stack([s[1] for s in samples])}
