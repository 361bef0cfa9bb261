"""The `mpu` object DeepSpeed asks for: which ranks average gradients and which sum them.

Parameters are replicated on every rank of the dp × sp mesh. A sequence-parallel rank
holds a block of the tokens of its group's samples, so its gradient is a partial sum:
the gradient of the batch is the SUM over the sp group and the AVERAGE over dp groups.

DeepSpeed's sequence-parallel hooks do exactly that when the mpu exposes
`get_sequence_parallel_*` and `get_sequence_data_parallel_*`: ZeRO partitions and
reduces over the sequence-data-parallel group (all dp × sp ranks) and divides by
`world / sp = dp` (stages 0-3 alike). With the per-rank loss normalised by the global
token count (docs/design.md §3.4) this gives the single-process gradient; the parity tests in
tests/train/ check it with SGD, where a factor of sp would show.

There is no tensor parallelism: the model-parallel group is each rank on its own, so
gradient-norm reductions over it are no-ops rather than sums over replicated copies.
"""

import torch.distributed as dist


class MeshMPU:
    """DeepSpeed `mpu` for a dp × sp mesh, built from its two process groups.

    Collective on construction (every rank must build it): it creates the size-1
    model-parallel groups.
    """

    def __init__(self, dp_group, sp_group):
        self._dp_group = dp_group
        self._sp_group = sp_group
        self._solo_group, _ = dist.new_subgroups(group_size=1)

    # data parallel: ranks holding different samples
    def get_data_parallel_group(self):
        return self._dp_group

    def get_data_parallel_rank(self):
        return dist.get_rank(self._dp_group)

    def get_data_parallel_world_size(self):
        return dist.get_world_size(self._dp_group)

    def get_data_parallel_group_ranks(self):
        return dist.get_process_group_ranks(self._dp_group)

    # sequence parallel: ranks holding token blocks of the same samples
    def get_sequence_parallel_group(self):
        return self._sp_group

    def get_sequence_parallel_rank(self):
        return dist.get_rank(self._sp_group)

    def get_sequence_parallel_world_size(self):
        return dist.get_world_size(self._sp_group)

    # sequence × data parallel: every rank; ZeRO shards and reduces over it
    def get_sequence_data_parallel_group(self):
        return dist.group.WORLD

    def get_sequence_data_parallel_rank(self):
        return dist.get_rank()

    def get_sequence_data_parallel_world_size(self):
        return dist.get_world_size()

    # model (tensor) parallel: none
    def get_model_parallel_group(self):
        return self._solo_group

    def get_model_parallel_rank(self):
        return 0

    def get_model_parallel_world_size(self):
        return 1

    # the same under the name DeepSpeed's universal-checkpoint loading asks for
    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
