"""Token-wise maps between compact vector/scalar features, computed through Clifford multivectors.

The model's residual stream is vectors ``[..., C, 3]`` and scalars ``[..., S]``: C*3 + S numbers per
token. A multivector holding them is ``[..., C + S, 8]``, most of it zeros, and a Clifford MLP's hidden
layers are wider still. :class:`VectorScalarMLP` embeds, runs a :class:`CliffordMLP` and reads the
result inside one call, so with ``token_chunk`` set only compact features ever span the whole sequence:
the multivectors exist ``token_chunk`` tokens at a time, in the forward and in the recompute of backward.
"""

from __future__ import annotations

import torch
from torch import nn

from .algebra import Compact
from .chunked import chunked
from .clifford import CliffordMLP


def _rows(t: torch.Tensor, lead: int) -> torch.Tensor:
    """Merge the ``lead`` leading (batch, token) dims into one row dim."""
    return t.reshape(-1, *t.shape[lead:])


class VectorScalarMLP(nn.Module):
    """(vectors ``[..., vectors_in, 3]``, scalars ``[..., scalars_in]``) -> (vectors ``[..., vectors_out, 3]``,
    scalars ``[..., scalars_out]``): embed as multivectors, a :class:`CliffordMLP`, read the first channels'
    vector part and the next channels' scalar part. O(3)-equivariant as the MLP is. ``options``: CliffordMLP's.

    ``token_chunk`` (default None) bounds memory on long sequences: the map runs ``token_chunk`` tokens at a
    time, and under autograd backward keeps only the compact inputs and recomputes each chunk (about one
    extra forward), so no multivector or hidden activation spans the whole sequence.
    """

    def __init__(self, vectors_in: int, scalars_in: int, vectors_out: int, scalars_out: int, hidden: int,
                 n_layers: int = 1, token_chunk: int | None = None, **options):
        super().__init__()
        self.vectors_out, self.scalars_out = vectors_out, scalars_out
        self.token_chunk = token_chunk
        self.mlp = CliffordMLP(vectors_in + scalars_in, vectors_out + scalars_out, hidden, n_layers, **options)

    def _map(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mlp(Compact(x, f), read=(self.vectors_out, self.scalars_out))

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.token_chunk is None:
            return self._map(x, f)
        lead = x.shape[:-2]
        rows = (_rows(x, len(lead)), _rows(f, len(lead)))
        out = chunked(lambda _, *r: self._map(*r), self.token_chunk, rows, tuple(self.parameters()))
        return out[0].view(*lead, *out[0].shape[1:]), out[1].view(*lead, *out[1].shape[1:])
