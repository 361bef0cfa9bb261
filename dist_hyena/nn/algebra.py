"""The Clifford algebra Cl(3,0), derived from its generators rather than typed by hand.

Multivectors have 8 coefficients in the blade order ``[1 | e1 e2 e3 | e12 e13 e23 | e123]`` (grades 0, 1,
2, 3). The algebra's own functions take them last (``[..., 8]``); the layers keep them first, channels last
(``[8, ..., C]``, blade-major), so that each blade of all channels is one contiguous matrix. A blade is represented
internally by the bitmask of the basis vectors it contains (e1 = 0b001, e2 = 0b010,
e3 = 0b100), which makes the product of two blades a XOR plus a sign.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

DIM = 3
# Blade bitmasks in storage order: grade-major, then lexicographic within a grade.
BLADES: tuple[int, ...] = tuple(
    sorted(range(2**DIM), key=lambda m: (bin(m).count("1"), [i for i in range(DIM) if m >> i & 1]))
)
N_BLADES = len(BLADES)
GRADES: tuple[int, ...] = tuple(bin(m).count("1") for m in BLADES)
N_GRADES = DIM + 1
SCALAR = 0
VECTOR = slice(1, 4)


def _reorder_sign(a: int, b: int) -> int:
    """Sign of moving the basis vectors of blade ``b`` past those of blade ``a`` into canonical order."""
    swaps = 0
    a >>= 1
    while a:
        swaps += bin(a & b).count("1")
        a >>= 1
    return -1 if swaps % 2 else 1


@functools.cache
def _cayley_list() -> tuple[tuple[tuple[int, ...], ...], ...]:
    index = {m: i for i, m in enumerate(BLADES)}
    table = [[[0] * N_BLADES for _ in range(N_BLADES)] for _ in range(N_BLADES)]
    for i, a in enumerate(BLADES):
        for j, b in enumerate(BLADES):
            # Euclidean metric: e_k e_k = +1, so only the reordering contributes a sign.
            table[i][j][index[a ^ b]] = _reorder_sign(a, b)
    return tuple(tuple(tuple(row) for row in plane) for plane in table)


@functools.cache
def product_terms() -> tuple[tuple[tuple[int, int], ...], ...]:
    """The Cayley table in sparse form: ``terms[k][i] = (j, sign)`` with blade_i blade_j = sign * blade_k. Each
    (i, k) has exactly one such j: a product of blades is one blade."""
    table = _cayley_list()
    return tuple(tuple(next((j, table[i][j][k]) for j in range(N_BLADES) if table[i][j][k]) for i in range(N_BLADES))
                 for k in range(N_BLADES))


@functools.cache
def grade_paths() -> tuple[tuple[int, int, int], ...]:
    """The grade paths (g_i, g_j, g_k) a product of a grade-g_i and a grade-g_j blade can reach: 20 of the 64."""
    return tuple(sorted({(GRADES[i], GRADES[j], GRADES[k]) for k, row in enumerate(product_terms())
                         for i, (j, _) in enumerate(row)}))


@functools.cache
def term_paths() -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """[8 (k)][8 (i)]: the sign of each term blade_i blade_j(k, i) = ±blade_k of the product and the index of its
    grade path (g_i, g_j, g_k) in :func:`grade_paths`."""
    paths = {p: n for n, p in enumerate(grade_paths())}
    terms = product_terms()
    sign = tuple(tuple(s for _, s in row) for row in terms)
    path = tuple(tuple(paths[GRADES[i], GRADES[j], GRADES[k]] for i, (j, _) in enumerate(row))
                 for k, row in enumerate(terms))
    return sign, path


def cayley_table(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``C[i, j, k]``: the coefficient of blade k in blade_i * blade_j. Shape ``[8, 8, 8]``."""
    return torch.tensor(_cayley_list(), dtype=dtype, device=device)


def grade_index(device=None) -> torch.Tensor:
    """Grade of each blade, ``[8]`` (long)."""
    return torch.tensor(GRADES, dtype=torch.long, device=device)


def embed(vectors: torch.Tensor | None, scalars: torch.Tensor | None) -> torch.Tensor:
    """Vectors ``[..., C, 3]`` and scalars ``[..., S]`` -> multivector channels ``[8, ..., C + S]`` (blade-major,
    the layers' layout). Vector channels come first (blades 1-3), scalar channels after (blade 0)."""
    ref, lead = (vectors, vectors.shape[:-2]) if vectors is not None else (scalars, scalars.shape[:-1])
    n_vectors = 0 if vectors is None else vectors.shape[-2]
    n_scalars = 0 if scalars is None else scalars.shape[-1]
    mv = ref.new_zeros(N_BLADES, *lead, n_vectors + n_scalars)
    if vectors is not None:
        mv[VECTOR, ..., :n_vectors] = vectors.movedim(-1, 0)
    if scalars is not None:
        mv[SCALAR, ..., n_vectors:] = scalars
    return mv


class Compact(NamedTuple):
    """What :func:`embed` would build, kept compact: vectors ``[..., C, 3]`` (channels ``0..C-1``, blades 1-3) and
    scalars ``[..., S]`` (channels ``C..C+S-1``, blade 0), every other coefficient zero. The layers that take it
    (``CliffordLinear``) skip the zeros instead of multiplying them."""

    vectors: torch.Tensor
    scalars: torch.Tensor

    @property
    def channels(self) -> int:
        return self.vectors.shape[-2] + self.scalars.shape[-1]


def check_read(channels: int, n_vectors: int, n_scalars: int) -> None:
    if channels < n_vectors + n_scalars:
        raise ValueError(f"{channels} multivector channels cannot hold {n_vectors} vectors + {n_scalars} scalars")


def read(mv: torch.Tensor, n_vectors: int, n_scalars: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multivector channels ``[8, ..., K]`` -> vectors ``[..., n_vectors, 3]`` from the first channels' blades
    1-3, scalars ``[..., n_scalars]`` from the following channels' blade 0."""
    check_read(mv.shape[-1], n_vectors, n_scalars)
    return mv[VECTOR, ..., :n_vectors].movedim(0, -1), mv[SCALAR, ..., n_vectors : n_vectors + n_scalars]


def geometric_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Full geometric product of multivectors ``[..., 8] x [..., 8] -> [..., 8]``."""
    return torch.einsum("...i,ijk,...j->...k", a, cayley_table(a.dtype, a.device), b)


def orthogonal_action(q: torch.Tensor) -> torch.Tensor:
    """The 8x8 matrix by which an orthogonal map ``q`` ``[3, 3]`` acts on multivector coefficients.

    A blade e_a e_b ... (distinct, orthonormal factors) maps to the geometric product of the
    images q e_a, q e_b, ...; those images stay orthonormal, so the product is again a blade.
    Used to test equivariance of layers on full multivectors.
    """
    columns = []
    for m in BLADES:
        image = q.new_zeros(N_BLADES)
        image[SCALAR] = 1
        for axis in range(DIM):
            if m >> axis & 1:
                v = q.new_zeros(N_BLADES)
                v[VECTOR] = q[:, axis]
                image = geometric_product(image, v)
        columns.append(image)
    return torch.stack(columns, dim=1)
