"""Theoretical communication volume of one sequence-parallel convolution, in closed form.

Group totals in bytes for one forward pass over N tokens on P ranks, per ledger op; each
backward op (``<op>.backward``) moves the same volume, the mirror exchange. Nothing that
stays on a rank is counted. With Cv vector and D scalar channels and itemsize s:

- ``channels``: the packed inputs (6 Cv + 2 D numbers a token) go out to the channel
  owners, u (3 Cv + D a token) comes back: sum_r n_r (W_in - w_in_r) and
  sum_r w_out_r (N - n_r) numbers, i.e. (P-1)/P of everything when blocks and channel
  shares are even: 3 (3 Cv + D) (P-1)/P numbers per token forward.
- ``fft``: per transformed column (2 (3 Cv + D) forward, 3 Cv + D inverse), with M = N/P:
  the real exchange moves (P-1) M reals, the complex one 2 R (P-1) M reals (R = 1 for
  circular, 2 for causal, whose spectrum is twice as long): 3 (P-1) M or 5 (P-1) M reals
  per transform, so 9 or 15 (3 Cv + D) (P-1)/P numbers per token forward.
- ``token_counts``: each rank's int64 count vector of length P (an all-reduce payload).

One ``halo_exchange`` (op ``halo``) of width w over blocks [a_r, b_r) moves, for every rank
r, the halo rows it does not own itself, each ``row_numel`` numbers: ``causal``,
min(w, a_r) rows (the w tokens before a_r that exist); ``circular``, the 2w positions
[a_r - w, a_r) and [b_r, b_r + w) less those whose index mod N falls back into [a_r, b_r)
(only when w > N - n_r). So at most 2w rows per rank, independent of N: exactly
2w P rows (``circular``) and w (P - 1) (``causal``) in total when w <= every block and P >= 2.
"""

from __future__ import annotations

from ..ops import conv_length
from .conv import channel_partition, packed_widths, resolve_strategy
from .mesh import split_sizes

INT64_BYTES = 8


def conv_bytes(strategy: str, mode: str, n_tokens: int, sp: int, n_vector: int, n_scalar: int,
               itemsize: int, batch: int = 1, counts_given: bool = False) -> dict[str, int]:
    """Forward bytes per ledger op, summed over the SP group, for one ``SequenceParallelConv`` call
    on ``batch`` samples of ``n_tokens``; ``counts_given``: the caller passed the token counts (as the model
    does), so the call has no ``token_counts`` all-reduce of its own.

    ``itemsize``: bytes of one number on the wire (the input dtype for ``channels``; the FFT
    dtype, at least float32, for ``fft``).
    """
    strategy = resolve_strategy(strategy, n_vector + n_scalar, sp)
    out = {} if counts_given else {"token_counts": sp * sp * INT64_BYTES}
    if strategy == "channels":
        counts = split_sizes(n_tokens, sp)
        parts = channel_partition(n_vector, n_scalar, sp)
        w_in, w_out = packed_widths(parts)
        scale = batch * itemsize
        out["to_channel_layout"] = scale * sum(n * (sum(w_in) - w) for n, w in zip(counts, w_in, strict=True))
        out["to_token_layout"] = scale * sum(w * (n_tokens - n) for n, w in zip(counts, w_out, strict=True))
        return out
    m = n_tokens // sp
    itemsize *= batch  # every sample's columns travel side by side
    r = conv_length(n_tokens, mode) // n_tokens
    columns = 3 * n_vector + n_scalar
    out["fft.rows_to_columns"] = itemsize * 2 * columns * (sp - 1) * m
    out["fft.columns_to_rows"] = itemsize * 2 * columns * 2 * r * (sp - 1) * m
    out["ifft.rows_to_columns"] = itemsize * columns * 2 * r * (sp - 1) * m
    out["ifft.columns_to_rows"] = itemsize * columns * (sp - 1) * m
    return out


def bytes_per_token(strategy: str, mode: str, sp: int, n_vector: int, n_scalar: int, itemsize: int) -> float:
    """Forward + backward all-to-all bytes per token of one layer, the even-split closed form above."""
    strategy = resolve_strategy(strategy, n_vector + n_scalar, sp)
    per_token = 3 * (3 * n_vector + n_scalar) * (sp - 1) / sp
    if strategy == "fft":
        per_token *= 3 if mode == "circular" else 5
    return 2 * per_token * itemsize


def _owned_before(m: int, start: int, stop: int, n_tokens: int) -> int:
    """How many integers x in [0, m) (counted negatively for m < 0) have x mod N in [start, stop)."""
    q, rem = divmod(m, n_tokens)
    return q * (stop - start) + min(max(rem - start, 0), stop - start)


def halo_bytes(mode: str, counts: list[int], w: int, row_numel: int, itemsize: int, batch: int = 1) -> int:
    """Forward bytes of one ``halo_exchange`` of width ``w`` over blocks of ``counts`` tokens, summed over
    the SP group (its backward moves the same); ``row_numel`` numbers a token, ``itemsize`` bytes each."""
    if mode not in ("circular", "causal"):
        raise ValueError(f"halo_bytes: mode must be 'circular' or 'causal', got {mode!r}")
    n_tokens, rows, start = sum(counts), 0, 0
    for n in counts:
        stop = start + n
        if mode == "causal":
            rows += min(w, start)
        else:  # of [start - w, start) and [stop, stop + w), the indices that wrap back into the own block stay
            own = [_owned_before(m, start, stop, n_tokens) for m in (start - w, start, stop, stop + w)]
            rows += 2 * w - (own[1] - own[0]) - (own[3] - own[2])
        start = stop
    return rows * row_numel * itemsize * batch
