"""The device mesh: world = dp x sp, and every piece of rank arithmetic in the package.

SP groups are blocks of consecutive ranks (an SP group stays inside a node under every
launcher, which places consecutive ranks on one node); DP groups stride across them:
with world 4 = dp 2 x sp 2 the SP groups are {0, 1}, {2, 3} and the DP groups {0, 2}, {1, 3}.
Token blocks follow ``torch.tensor_split``: the first ``N % sp`` SP ranks hold one extra token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import ledger


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous pieces of ``total`` items, ``torch.tensor_split`` convention."""
    if parts < 1:
        raise ValueError(f"cannot split into {parts} parts")
    base, extra = divmod(total, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


def token_block(n_tokens: int, sp_rank: int, sp_size: int) -> tuple[int, int]:
    """``(start, stop)`` of SP rank ``sp_rank``'s contiguous block of ``n_tokens``, the :func:`split_sizes` split
    (what the model's ranks hold and what the data readers read for them)."""
    if not 0 <= sp_rank < sp_size:
        raise ValueError(f"sp_rank must be in [0, {sp_size}), got {sp_rank}")
    sizes = split_sizes(n_tokens, sp_size)
    start = sum(sizes[:sp_rank])
    return start, start + sizes[sp_rank]


@dataclass(frozen=True)
class Mesh:
    """A 2-D mesh (dp, sp) over the default process group; build it with :func:`init_mesh`."""

    world: int
    dp: int
    sp: int
    rank: int
    sp_group: dist.ProcessGroup | None
    dp_group: dist.ProcessGroup | None

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp

    def token_block(self, n_tokens: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's contiguous block of a sequence of ``n_tokens``."""
        return token_block(n_tokens, self.sp_rank, self.sp)

    def token_counts(self, n_local: int, device: torch.device | str = "cpu", layer: str = "") -> list[int]:
        """Token counts of every SP rank, given this rank's (one tiny all-reduce, logged as ``token_counts``).

        Raises if they are not a ``tensor_split`` of their sum, i.e. the input was not
        sharded with :func:`shard_sequence`, naming every rank's count.
        """
        counts = torch.zeros(self.sp, dtype=torch.int64, device=device)
        counts[self.sp_rank] = n_local
        if self.sp > 1:
            dist.all_reduce(counts, group=self.sp_group)
            log = ledger.active()
            if log is not None:
                log.add(layer, "token_counts", counts.numel() * counts.element_size())
        counts = counts.tolist()
        if counts != split_sizes(sum(counts), self.sp):
            raise ValueError(
                f"token blocks {counts} over the SP group are not the contiguous tensor_split of "
                f"{sum(counts)} tokens; shard inputs with dist_hyena.parallel.shard_sequence"
            )
        return counts


def init_mesh(sp: int, dp: int | None = None) -> Mesh:
    """Build the (dp, sp) mesh; torch.distributed must be initialised. ``dp`` defaults to world // sp."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("init_mesh needs torch.distributed initialised first (dist.init_process_group)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if not isinstance(sp, int) or isinstance(sp, bool) or sp < 1:
        raise ValueError(f"init_mesh: sp must be a positive integer, got {sp!r}")
    if world % sp != 0:
        raise ValueError(f"init_mesh: world size {world} is not divisible by sp={sp}")
    if dp is None:
        dp = world // sp
    if not isinstance(dp, int) or isinstance(dp, bool) or dp < 1:
        raise ValueError(f"init_mesh: dp must be a positive integer, got {dp!r}")
    if dp * sp != world:
        raise ValueError(f"init_mesh: dp x sp = {dp} x {sp} = {dp * sp} does not match world size {world}")
    # Every rank must create every group, in the same order, even those it is not in.
    sp_group = dp_group = None
    for d in range(dp):
        group = dist.new_group([d * sp + s for s in range(sp)])
        if rank // sp == d:
            sp_group = group
    for s in range(sp):
        group = dist.new_group([d * sp + s for d in range(dp)])
        if rank % sp == s:
            dp_group = group
    return Mesh(world=world, dp=dp, sp=sp, rank=rank, sp_group=sp_group, dp_group=dp_group)
