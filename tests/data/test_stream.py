"""Streaming: DP-disjoint epochs, SP token blocks, per-rank chunk reads, exact resume."""

import shutil

import numpy as np
import pytest
import torch
import zarr

from dist_hyena.data import DataError, GeneratedRecall, StreamingLoader
from dist_hyena.data.recall_task import position_encoding
from tests.data.conftest import SMALL_RECALL


def _epoch(loader):
    return [b for b in loader]


def _same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_batch_contract_nbody(manybody_store):
    loader = StreamingLoader(manybody_store, "train", batch_size=4)
    batch = next(iter(loader))
    assert batch["x"].shape == (4, 12, 2, 3) and batch["f"].shape == (4, 12, 1) and batch["y"].shape == (4, 12, 1, 3)
    assert batch["x"].dtype == torch.float32 and batch["index"].dtype == torch.int64
    assert loader.meta["task"] == "nbody" and loader.meta["vector_in"] == 2 and loader.meta["scalar_in"] == 1
    assert loader.meta["n_tokens"] == 12 and len(loader) == 5
    root = zarr.open(manybody_store, mode="r")
    i = batch["index"].numpy()
    assert np.array_equal(batch["x"][:, :, 0].numpy(), root["train/positions"][:, 0][i])
    assert np.array_equal(batch["x"][:, :, 1].numpy(), root["train/velocities"][:, 0][i])
    assert np.array_equal(batch["y"][:, :, 0].numpy(), root["train/positions"][:, 1][i])
    assert np.array_equal(batch["f"][..., 0].numpy(), root["train/charges"][:][i])


@pytest.mark.parametrize("dp_size", [2, 4])
def test_each_sample_once_per_epoch_across_dp_ranks(manybody_store, dp_size):
    seen = {}
    for epoch in (0, 1):
        ids = []
        for r in range(dp_size):
            loader = StreamingLoader(
                manybody_store, "train", batch_size=5 if dp_size == 2 else 1, dp_rank=r, dp_size=dp_size, seed=11
            )
            loader.set_epoch(epoch)
            ids += [int(i) for b in loader for i in b["index"]]
        assert sorted(ids) == list(range(20))
        seen[epoch] = ids
    assert seen[0] != seen[1]  # a new permutation each epoch


def test_without_drop_last_ranks_stay_in_step(manybody_store):
    lengths, ids = [], []
    for r in range(3):
        loader = StreamingLoader(manybody_store, "train", batch_size=3, dp_rank=r, dp_size=3, drop_last=False)
        batches = _epoch(loader)
        lengths.append(len(batches))
        ids += [int(i) for b in batches for i in b["index"]]
    assert lengths == [3, 3, 3] and set(ids) == set(range(20)) and len(ids) == 21  # 7 per rank, one wrap


@pytest.mark.parametrize("sp_size", [3, 5])
def test_sp_blocks_concatenate_to_the_sample(manybody_store, sp_size):
    full = _epoch(StreamingLoader(manybody_store, "val", batch_size=2, seed=1))
    parts = [
        _epoch(StreamingLoader(manybody_store, "val", 2, sp_rank=r, sp_size=sp_size, seed=1)) for r in range(sp_size)
    ]
    assert [p[0]["x"].shape[1] for p in parts] == [len(t) for t in torch.tensor_split(torch.arange(12), sp_size)]
    for k, batch in enumerate(full):
        for key in ("x", "f", "y"):
            assert torch.equal(torch.cat([p[k][key] for p in parts], dim=1), batch[key])
        assert all(torch.equal(p[k]["index"], batch["index"]) for p in parts)


def test_recall_blocks_share_target_and_encode_global_positions(recall_store):
    full = _epoch(StreamingLoader(recall_store, "train", batch_size=3))
    parts = [_epoch(StreamingLoader(recall_store, "train", 3, sp_rank=r, sp_size=2)) for r in range(2)]
    assert full[0]["x"].shape == (3, 11, 1, 3) and full[0]["f"].shape == (3, 11, 16) and full[0]["y"].shape == (3, 1, 3)
    for k, batch in enumerate(full):
        assert torch.equal(torch.cat([p[k]["x"] for p in parts], 1), batch["x"])
        assert all(torch.equal(p[k]["y"], batch["y"]) for p in parts)
    assert torch.equal(parts[1][0]["f"][0], torch.tensor(position_encoding(6, 11)))
    # the target is the value that followed the query key earlier in the sequence
    x, y = full[0]["x"][:, :, 0], full[0]["y"][:, 0]
    for s in range(3):
        keys, values = x[s, 0:-1:2], x[s, 1:-1:2]  # 11 tokens: 5 (key, value) pairs, then the query
        hits = (keys - x[s, -1]).abs().sum(-1) == 0
        assert hits.any() and all(torch.equal(v, y[s]) for v in values[hits])


def test_generated_recall_equals_the_store(recall_store):
    source = GeneratedRecall(n_tokens=11, seed=5, sizes={"train": 12, "val": 4, "test": 4})
    for sp_rank in (0, 1):
        a = _epoch(StreamingLoader(source, "train", 4, sp_rank=sp_rank, sp_size=2))
        b = _epoch(StreamingLoader(recall_store, "train", 4, sp_rank=sp_rank, sp_size=2))
        _same_batches(a, b)
    assert SMALL_RECALL["n_tokens"] == source.meta["n_tokens"]


def test_positions_from_end_encode_the_distance_to_the_query(tmp_path):
    """positions="from_end": token i carries the encoding of N - 1 - i (the query: 0) in the store and on the
    fly alike, per SP block; the tokens and targets are those of the index encoding."""
    from dist_hyena.data import generate_store

    sizes = dict(SMALL_RECALL, n_tokens=12)
    store = generate_store("recall", tmp_path / "store", seed=5, positions="from_end", **sizes)
    source = GeneratedRecall(n_tokens=12, seed=5, sizes={"train": 12, "val": 4, "test": 4}, positions="from_end")
    by_index = GeneratedRecall(n_tokens=12, seed=5, sizes={"train": 12, "val": 4, "test": 4})
    for sp_rank in (0, 1):
        a = _epoch(StreamingLoader(source, "train", 4, sp_rank=sp_rank, sp_size=2, shuffle=False))
        _same_batches(a, _epoch(StreamingLoader(store, "train", 4, sp_rank=sp_rank, sp_size=2, shuffle=False)))
        b = _epoch(StreamingLoader(by_index, "train", 4, sp_rank=sp_rank, sp_size=2, shuffle=False))
        assert torch.equal(a[0]["x"], b[0]["x"]) and torch.equal(a[0]["y"], b[0]["y"])
        first = 6 * sp_rank
        expected = np.stack([position_encoding(11 - i, 12 - i)[0] for i in range(first, first + 6)])
        assert torch.equal(a[0]["f"][1], torch.tensor(expected))
    with pytest.raises(ValueError, match="positions"):
        GeneratedRecall(n_tokens=12, positions="middle")


@pytest.mark.parametrize("n", [11, 12])
def test_signed_positions_are_the_circular_offset_from_token_0(n):
    """positions="signed": token i carries the encoding of i in the first half, of i - N in the second, in any
    SP block; so the last token is -1 and the query's encoding is the same at every length."""
    source = GeneratedRecall(n_tokens=n, seed=5, sizes={"train": 4, "val": 4, "test": 4}, positions="signed")
    offsets = [i if i < (n + 1) // 2 else i - n for i in range(n)]
    expected = np.stack([position_encoding(o, o + 1)[0] for o in offsets])
    for sp_size in (1, 2, 3):
        blocks = [_epoch(StreamingLoader(source, "train", 2, sp_rank=r, sp_size=sp_size))[0]["f"][0]
                  for r in range(sp_size)]
        assert torch.equal(torch.cat(blocks), torch.tensor(expected))


def test_an_sp_rank_reads_only_its_token_chunks(manybody_store, tmp_path):
    # 12 tokens in chunks of 3; sp_size 4 gives rank 1 exactly token chunk 1
    loader = StreamingLoader(manybody_store, "train", batch_size=2, sp_rank=1, sp_size=4)
    _epoch(loader)
    reads = loader.reader.chunk_reads
    assert reads and all(_token_coord(key.split("/")) == "1" for key in reads), sorted(reads)
    rows = 7  # ceil(20 / 3) sample chunks
    per_array = {
        name: sum(n for k, n in reads.items() if f"/{name}/" in k) for name in ("positions", "velocities", "charges")
    }
    assert per_array == {"positions": 2 * rows, "velocities": rows, "charges": rows}  # input + target frame
    assert set(reads.values()) == {1}  # each chunk decoded once
    # Independent check: with no other token chunk on disk, rank 1 still reads the epoch...
    store = tmp_path / "only_chunk_1"
    shutil.copytree(manybody_store, store)
    for name in ("positions", "velocities", "charges"):
        for f in (store / "train" / name / "c").rglob("*"):
            if f.is_file() and _token_coord(f.parts) != "1":
                f.unlink()
    assert len(_epoch(StreamingLoader(store, "train", 2, sp_rank=1, sp_size=4))) == 10
    # ...while rank 0 fails, naming the array and the chunk it misses.
    with pytest.raises(DataError, match=r"train/\w+: chunk train/\w+/c/[\d/]+ is missing"):
        _epoch(StreamingLoader(store, "train", 2, sp_rank=0, sp_size=4))


def _token_coord(parts):
    """Token chunk coordinate in a chunk key: charges c/<row>/<tok>; others c/<row>/<frame>/<tok>/0."""
    return parts[-1] if "charges" in parts else parts[-2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_batches(manybody_store, num_workers):
    def make():
        return StreamingLoader(
            manybody_store, "train", batch_size=3, dp_rank=1, dp_size=2, seed=4, num_workers=num_workers
        )

    reference = make()
    want = _epoch(reference) + _epoch(reference)  # epochs 0 and 1
    first = make()
    got = []
    for batch in first:
        got.append(batch)
        if len(got) == 2:
            break
    state = first.state_dict()
    assert state["epoch"] == 0 and state["samples"] == 2 * 3 * 2 and state["seed"] == 4
    resumed = make()
    resumed.load_state_dict(state)
    got += _epoch(resumed) + _epoch(resumed)
    _same_batches(got, want)
    assert resumed.state_dict()["epoch"] == 2
    first.set_epoch(0)  # a broken-off epoch starts over from its first batch
    _same_batches(_epoch(first), want[: len(first)])


def _global_steps(loaders, epochs: int = 2) -> list[list[int]]:
    """Each step's global sample ids: the dp ranks' batches of that step, in rank order."""
    per_rank = [[b["index"].tolist() for e in range(epochs) for b in _epoch(loader)] for loader in loaders]
    return [sum(step, []) for step in zip(*per_rank, strict=True)]


def test_state_is_layout_independent(manybody_store):
    """dp 2 x batch 3 and dp 1 x batch 6 train on the same global batches, and a state taken at one layout
    continues the same global sequence at the other, in both directions and across the epoch boundary."""

    def loaders(dp: int):
        return [StreamingLoader(manybody_store, "train", 6 // dp, dp_rank=r, dp_size=dp, seed=5) for r in range(dp)]

    want = _global_steps(loaders(1))
    assert want == _global_steps(loaders(2)) and len(want) == 2 * (20 // 6)
    first = loaders(2)
    for loader in first:
        next(iter(loader))  # one step at dp 2
    state = first[0].state_dict()
    assert state == first[1].state_dict() and state["samples"] == 6 and "dp_rank" not in state
    for dp in (1, 2):
        resumed = loaders(dp)
        for loader in resumed:
            loader.load_state_dict(state)
        assert [want[0]] + _global_steps(resumed) == want


def test_missing_store_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'none'}.*datasets/nbody.py"):
        StreamingLoader(tmp_path / "none", "train", 4)


def test_read_error_in_the_prefetch_thread_reaches_the_caller(manybody_store, tmp_path):
    store = tmp_path / "broken"
    shutil.copytree(manybody_store, store)
    chunk = store / "train/charges/c/4/2"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: bit rot
    chunk.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train/charges: chunk train/charges/c/4/2 is corrupt"):
        _epoch(StreamingLoader(store, "train", 2, shuffle=False, prefetch=2))


def test_batches_never_alias_cached_data(recall_store):
    loader = StreamingLoader(recall_store, "train", batch_size=1, shuffle=False)
    first, second = _epoch(loader)[:2]
    first["f"].zero_()  # a model may work in place on its inputs
    assert torch.equal(second["f"][0], torch.tensor(position_encoding(0, 11)))


def test_near_query_positions_hold_no_encoding_unseen_at_a_shorter_length():
    """positions="near_query": every token of a 2048-token sequence has an encoding a 32-token one holds (the
    distance to the query clipped at QUERY_WINDOW, and its parity), and the query's is unique."""
    from dist_hyena.data.recall_task import QUERY_WINDOW, invariant_input

    short, long = (invariant_input(n, "near_query", 0, n) for n in (32, 2048))
    seen = {tuple(row) for row in short.round(6)}
    assert all(tuple(row) in seen for row in long.round(6))
    assert len(seen) == QUERY_WINDOW + 3  # d = 0 .. QUERY_WINDOW - 1, then the far codes: d even, d = 1 or 3 mod 4
    assert not (long[:-1] == long[-1]).all(axis=1).any()
    source = GeneratedRecall(n_tokens=12, seed=5, sizes={"train": 4, "val": 4, "test": 4}, positions="near_query")
    blocks = [_epoch(StreamingLoader(source, "train", 2, sp_rank=r, sp_size=2))[0]["f"][0] for r in range(2)]
    assert torch.equal(torch.cat(blocks), torch.tensor(invariant_input(12, "near_query", 0, 12)))


def test_train_lengths_make_each_training_batch_at_one_listed_length():
    """train_lengths: every training batch is one length from the list (several occur), the same on every SP rank
    (the blocks of a batch join into that length's sequences, exactly as generated at that length), and the same
    again in a second loader (resume sees the same batches); validation stays at n_tokens."""
    from dist_hyena.data.recall_task import RecallTask

    source = GeneratedRecall(n_tokens=9, seed=5, sizes={"train": 64, "val": 4, "test": 4}, positions="near_query",
                             train_lengths=[7, 12, 15])
    blocks = [_epoch(StreamingLoader(source, "train", 4, sp_rank=r, sp_size=2)) for r in (0, 1)]
    lengths = []
    for b0, b1 in zip(*blocks, strict=True):
        x = torch.cat([b0["x"], b1["x"]], dim=1)
        n = x.shape[1]
        lengths.append(n)
        task = RecallTask(n, 5, positions="near_query")
        for row, i in enumerate(b0["index"].tolist()):
            tokens, target = task.sample("train", i)
            assert torch.equal(x[row, :, 0], torch.tensor(tokens))
            assert torch.equal(b0["y"][row, 0], torch.tensor(target))
        assert torch.equal(torch.cat([b0["f"], b1["f"]], dim=1)[0], torch.tensor(task.encoding(0, n)))
    assert set(lengths) == {7, 12, 15}
    _same_batches(blocks[0], _epoch(StreamingLoader(source, "train", 4, sp_rank=0, sp_size=2)))
    assert all(b["x"].shape[1] == 9 for b in _epoch(StreamingLoader(source, "val", 2)))
    assert source.meta["params"]["train_lengths"] == [7, 12, 15]
    with pytest.raises(ValueError, match="train_lengths.*n_tokens must be >= 3"):
        GeneratedRecall(n_tokens=9, train_lengths=[16, 2])
