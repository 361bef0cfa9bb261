"""Store layout, verification and bad input: every problem is named, nothing overwritten."""

import json
import shutil

import numpy as np
import pytest
import zarr

from dist_hyena.data import DataError, generate_store, make_task, open_store, verify
from dist_hyena.data.store import Unit, dataset_attrs, prepare, write_unit
from tests.data.conftest import SMALL_MANYBODY, tree_bytes


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_layout_metadata_and_plain_zarr_read(manybody_store):
    root = zarr.open(manybody_store, mode="r")  # plain zarr reads it
    attrs = root.attrs.asdict()
    assert attrs["complete"] is True and attrs["schema_version"] == 1 and attrs["task"] == "nbody"
    assert attrs["splits"] == {"train": 20, "val": 6, "test": 6}
    assert root["train/positions"].shape == (20, 2, 12, 3) and root["train/positions"].chunks == (3, 1, 3, 3)
    assert root["val/charges"].shape == (6, 12)
    assert set(attrs["checksums"]) == {"train", "val", "test"}
    assert np.isfinite(root["test/velocities"][:]).all()
    # radial order: distance from the centroid at the input frame is non-decreasing
    x = root["train/positions"][:, attrs["input_frame"]]
    dist = np.linalg.norm(x - x.mean(1, keepdims=True), axis=-1)
    assert (np.diff(dist, axis=1) >= 0).all()
    assert verify(manybody_store) == []


def test_same_seed_same_bytes_other_seed_differs(manybody_store, tmp_path):
    again = generate_store("manybody", tmp_path / "again", seed=3, **SMALL_MANYBODY)
    assert tree_bytes(again) == tree_bytes(manybody_store)
    other = generate_store("manybody", tmp_path / "other", seed=4, **SMALL_MANYBODY)
    assert not np.array_equal(zarr.open(other)["train/positions"][:], zarr.open(again)["train/positions"][:])


def test_missing_chunk_is_named(manybody_store, tmp_path):
    store = _copy(manybody_store, tmp_path)
    (store / "train/velocities/c/2/0/1/0").unlink()
    problems = verify(store)
    assert any("train/velocities" in p and "c/2/0/1/0" in p and "missing" in p for p in problems), problems


def test_corrupt_chunk_is_named(manybody_store, tmp_path):
    store = _copy(manybody_store, tmp_path)
    chunk = store / "val/positions/c/1/1/2/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: bit rot
    chunk.write_bytes(bytes(data))
    cut = store / "train/velocities/c/5/0/3/0"
    cut.write_bytes(cut.read_bytes()[:20])  # cut short, as by a crash mid-write
    problems = verify(store)
    assert any("val/positions" in p and "c/1/1/2/0" in p and "corrupt" in p for p in problems), problems
    assert any("train/velocities" in p and "c/5/0/3/0" in p and "corrupt" in p for p in problems), problems


def test_changed_values_fail_the_checksum(manybody_store, tmp_path):
    store = _copy(manybody_store, tmp_path)
    arr = zarr.open(store, mode="r+")["test/charges"]
    arr[4, 0] = -arr[4, 0]  # a valid, finite, well-formed chunk with different content
    problems = verify(store)
    assert any("test/charges" in p and "samples [3, 6)" in p and "c/1/*" in p and "checksum" in p for p in problems), (
        problems
    )


def test_wrong_schema_version_and_incomplete_store_are_refused(manybody_store, tmp_path):
    store = _copy(manybody_store, tmp_path)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 0
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="schema_version 0"):
        open_store(store)
    meta["attributes"].update(schema_version=1, complete=False)
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="incomplete.*re-run"):
        open_store(store)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        open_store(tmp_path / "nothing")


def test_mismatched_array_shape_is_named(manybody_store, tmp_path):
    store = _copy(manybody_store, tmp_path)
    root = zarr.open_group(store, mode="r+")
    root.create_array("train/charges", shape=(20, 11), dtype="float32", overwrite=True)
    with pytest.raises(DataError, match=r"train/charges has shape \(20, 11\).*\(20, 12\)"):
        open_store(store)


def test_nan_or_bad_shape_in_a_source_writes_nothing(tmp_path):
    out = tmp_path / "s"
    task = make_task("manybody", seed=0, n_bodies=6, record_steps=(0, 2))
    specs = task.array_specs(6)
    prepare(out, dataset_attrs(task.attrs(), specs, {"train": 4}, 0, 2, 6), specs)
    data = task.generate("train", 0, 2)
    bad = {**data, "velocities": data["velocities"].copy()}
    bad["velocities"][1, 0, 3, 2] = np.inf
    with pytest.raises(DataError, match=r"train/velocities samples \[0, 2\) holds NaN/Inf"):
        write_unit(out, Unit("train", 0), bad)
    with pytest.raises(DataError, match=r"train/charges samples \[0, 2\): shape \(2, 5\), expected \(2, 6\)"):
        write_unit(out, Unit("train", 0), {**data, "charges": data["charges"][:, :5]})
    assert not (out / "train/positions/c").exists()  # no chunk of the unit was written
    with pytest.raises(DataError, match="incomplete"):
        open_store(out)


def test_existing_data_is_never_overwritten(manybody_store, tmp_path):
    before = tree_bytes(manybody_store)
    with pytest.raises(DataError, match="different settings.*seed"):
        generate_store("manybody", manybody_store, seed=99, **SMALL_MANYBODY)
    generate_store("manybody", manybody_store, seed=3, **SMALL_MANYBODY)  # complete already: a no-op
    assert tree_bytes(manybody_store) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a zarr store"):
        generate_store("nbody5", foreign, train=2, val=0, test=0)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_store_cut_short_while_being_created_is_completed(tmp_path):
    settings = dict(seed=1, n_tokens=9, train=5, val=2, test=0, samples_per_chunk=2)
    clean = generate_store("recall", tmp_path / "clean", **settings)
    cut = tmp_path / "cut"
    shutil.copytree(clean, cut)
    shutil.rmtree(cut / "val")  # as if rank 0 died before creating the val arrays
    shutil.rmtree(cut / "train/tokens/c/1")  # ...and a unit's data went missing with its digest
    shutil.rmtree(cut / "train/unit_sha256/c/1")
    meta = json.loads((cut / "zarr.json").read_text())
    meta["attributes"].update(complete=False, checksums=None)
    del meta["attributes"]["checksums"]
    (cut / "zarr.json").write_text(json.dumps(meta))
    generate_store("recall", cut, **settings)
    assert tree_bytes(cut) == tree_bytes(clean)
