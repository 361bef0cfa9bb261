"""zarr v3 stores: create or resume, write work units, finalise, verify, open (docs/design.md §4.3).

Write protocol (robust to a rank being killed at any point):
1. rank 0 creates the store (or checks that an existing one was made with the same
   parameters — otherwise nothing is touched) and lists the units still missing;
2. each rank writes whole units (one chunk row along samples, all arrays of a split):
   first the data chunks, then the unit's row of `<split>/unit_sha256` (sha256 per
   array of the unit's raw little-endian bytes). A unit without its digest row is
   missing and is rewritten from scratch on a re-run;
3. after every rank is done, rank 0 writes per-split checksums and, last of all,
   `complete: true`. Readers refuse a store without it.
Data arrays use NaN as fill value, so a chunk file that goes missing reads as non-finite.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync

from dist_hyena.data.layout import DIGEST_ARRAY, SCHEMA_VERSION, SPLITS, ArraySpec, n_units, unit_range

# zstd frames carry their size and, with checksum=True, a content hash: a truncated or
# altered chunk fails to decode instead of decoding to garbage (blosc has no such check).
_COMPRESSOR = zarr.codecs.ZstdCodec(level=3, checksum=True)
# Attributes that change while a store is being written; all others define the dataset.
_PROGRESS_ATTRS = ("complete", "checksums")


class DataError(RuntimeError):
    """A store or a sample is not what it should be; the message names array and chunk."""


@dataclass(frozen=True)
class Unit:
    split: str
    index: int


def dataset_attrs(
    task_attrs: dict,
    specs: list[ArraySpec],
    sizes: dict[str, int],
    seed: int,
    samples_per_chunk: int,
    tokens_per_chunk: int,
) -> dict:
    """The attributes that define a store (everything but progress)."""
    bad = [s for s in sizes if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; splits are {SPLITS}")
    return {
        "schema_version": SCHEMA_VERSION,
        **task_attrs,
        "seed": seed,
        "splits": {s: int(n) for s, n in sizes.items() if n > 0},
        "samples_per_chunk": samples_per_chunk,
        "tokens_per_chunk": tokens_per_chunk,
        "arrays": {s.name: s.to_json() for s in specs},
    }


def prepare(path: str | Path, attrs: dict, specs: list[ArraySpec]) -> list[Unit]:
    """Create the store at `path`, or resume one made with identical attrs. -> missing units
    (empty when the store is complete). Raises DataError, writing nothing, on a mismatch."""
    path = Path(path)
    attrs = json.loads(json.dumps(attrs))  # the JSON round trip makes tuples lists, as stored
    if (path / "zarr.json").exists():
        root = zarr.open_group(path, mode="r+")
        old = {k: v for k, v in root.attrs.asdict().items() if k not in _PROGRESS_ATTRS}
        if old != attrs:
            diff = sorted(k for k in set(old) | set(attrs) if old.get(k) != attrs.get(k))
            raise DataError(
                f"{path} holds a store made with different settings (differs in {diff}); "
                "nothing was changed. Use another --out or delete it to start over."
            )
        if root.attrs.get("complete"):
            return []
    elif path.exists() and any(path.iterdir()):
        raise DataError(f"{path} exists, is not empty and is not a zarr store; nothing was changed")
    else:
        # The attributes go first: a crash after this point leaves a store a re-run recognises.
        root = zarr.open_group(path, mode="w", attributes={**attrs, "complete": False})
    _ensure_arrays(root, attrs, specs)
    return [u for u in _all_units(attrs) if not _unit_done(root, u)]


def _ensure_arrays(root: zarr.Group, attrs: dict, specs: list[ArraySpec]) -> None:
    """Create the arrays a crash during creation left out; existing ones must fit the layout."""
    per = attrs["samples_per_chunk"]
    for split, n in attrs["splits"].items():
        group = root.require_group(split)
        layout = [(s.name, s.shape(n), s.chunks(per), "float32", np.nan, _COMPRESSOR) for s in specs]
        layout.append((DIGEST_ARRAY, (n_units(n, per), len(specs), 32), (1, len(specs), 32), "uint8", 0, None))
        for name, shape, chunks, dtype, fill, compressor in layout:
            if name in group:
                if group[name].shape != shape or group[name].chunks != chunks:
                    raise DataError(
                        f"array {split}/{name} has shape {group[name].shape}, chunks "
                        f"{group[name].chunks}; expected {shape}, {chunks}; nothing was changed"
                    )
                continue
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=compressor)


def _all_units(attrs: dict) -> list[Unit]:
    per = attrs["samples_per_chunk"]
    return [Unit(s, u) for s, n in attrs["splits"].items() for u in range(n_units(n, per))]


def _unit_done(root: zarr.Group, unit: Unit) -> bool:
    try:
        return bool(root[f"{unit.split}/{DIGEST_ARRAY}"][unit.index].any())
    except Exception:  # a digest chunk cut short by a crash: the unit is simply not done
        return False


def _digest(a: np.ndarray) -> np.ndarray:
    raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
    return np.frombuffer(hashlib.sha256(raw).digest(), dtype=np.uint8)


def write_unit(path: str | Path, unit: Unit, data: dict[str, np.ndarray]) -> None:
    """Check and write one unit's arrays, then its digest row (the completion marker)."""
    root = zarr.open_group(path, mode="r+")
    attrs = root.attrs.asdict()
    start, stop = unit_range(unit.index, attrs["splits"][unit.split], attrs["samples_per_chunk"])
    names = list(attrs["arrays"])
    for name in names:
        a = data.get(name)
        want = (stop - start, *attrs["arrays"][name]["sample_shape"])
        where = f"{unit.split}/{name} samples [{start}, {stop})"
        if a is None or tuple(a.shape) != want:
            got = None if a is None else tuple(a.shape)
            raise DataError(f"source for {where}: shape {got}, expected {want}; nothing written")
        if not np.isfinite(a).all():
            raise DataError(f"source for {where} holds NaN/Inf (chunk row {unit.index}); nothing written")
    for name in names:
        root[f"{unit.split}/{name}"][start:stop] = data[name]
    root[f"{unit.split}/{DIGEST_ARRAY}"][unit.index] = np.stack([_digest(data[n]) for n in names])


def finalize(path: str | Path) -> None:
    """After every unit is written: per-split checksums, then `complete: true` (last)."""
    root = zarr.open_group(path, mode="r+")
    attrs = root.attrs.asdict()
    missing = [u for u in _all_units(attrs) if not _unit_done(root, u)]
    if missing:
        raise DataError(f"{path}: {len(missing)} unit(s) not written, e.g. {missing[0]}; re-run to complete")
    root.attrs.update({"checksums": _split_checksums(root, attrs)})
    root.attrs.update({"complete": True})


def _split_checksums(root: zarr.Group, attrs: dict) -> dict:
    """sha256 over the unit digests of each array, in unit order (rank-count independent)."""
    out = {}
    for split in attrs["splits"]:
        rows = root[f"{split}/{DIGEST_ARRAY}"][:]
        out[split] = {n: hashlib.sha256(rows[:, i].tobytes()).hexdigest() for i, n in enumerate(attrs["arrays"])}
    return out


def open_store(path: str | Path, command: str = "") -> zarr.Group:
    """Open a finished store for reading; clear errors for missing, foreign or unfinished ones."""
    path = Path(path)
    hint = f" Create it with: {command}" if command else ""
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"no dataset store at {path}.{hint}")
    root = zarr.open_group(path, mode="r")
    attrs = root.attrs.asdict()
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {version!r}, this code reads {SCHEMA_VERSION}; regenerate it.{hint}")
    if not attrs.get("complete"):
        raise DataError(
            f"{path} is incomplete (preprocessing did not finish); re-run the same command to complete it.{hint}"
        )
    for split, n in attrs["splits"].items():
        for name, spec in attrs["arrays"].items():
            try:
                array = root[f"{split}/{name}"]
            except KeyError:
                raise DataError(f"{path}: array {split}/{name} is missing (the metadata lists it).{hint}") from None
            want = (n, *spec["sample_shape"])
            got = tuple(array.shape)
            if got != want:
                raise DataError(f"{path}: array {split}/{name} has shape {got}, metadata says {want}")
            if array.dtype != np.float32:
                raise DataError(f"{path}: array {split}/{name} has dtype {array.dtype}, expected float32")
    return root


def chunk_key(array: zarr.Array, coords: tuple[int, ...]) -> str:
    return f"{array.path}/c/" + "/".join(map(str, coords))


def read_chunk(array: zarr.Array, coords: tuple[int, ...]) -> np.ndarray:
    """One chunk (clipped to the array's edge), as stored; DataError naming the array and
    chunk when it cannot be decoded or is missing (reads as the NaN fill value)."""
    sel = tuple(slice(c * k, min((c + 1) * k, s)) for c, k, s in zip(coords, array.chunks, array.shape, strict=True))
    try:
        a = array[sel]
    except Exception as e:
        raise DataError(f"array {array.path}: chunk {chunk_key(array, coords)} is corrupt ({e})") from e
    if not np.isfinite(a).all():
        key = chunk_key(array, coords)
        # zarr reads an absent chunk as the (NaN) fill value and may do so for undecodable ones
        state = "is corrupt or holds NaN/Inf" if sync(array.store.exists(key)) else "is missing"
        raise DataError(f"array {array.path}: chunk {key} {state}")
    return a


def verify(path: str | Path, rank: int = 0, size: int = 1) -> list[str]:
    """Check shapes, counts, finiteness, every chunk and every checksum. Each of `size`
    callers checks every size-th unit. -> problems found (empty = good). Writes nothing."""
    root = open_store(path)
    attrs = root.attrs.asdict()
    problems = []
    names = list(attrs["arrays"])
    sums = _split_checksums(root, attrs)
    if rank == 0 and sums != attrs.get("checksums"):
        problems.append(f"split checksums in the attributes do not match the unit digests: {attrs.get('checksums')}")
    for i, unit in enumerate(_all_units(attrs)):
        if i % size != rank:
            continue
        start, stop = unit_range(unit.index, attrs["splits"][unit.split], attrs["samples_per_chunk"])
        stored = root[f"{unit.split}/{DIGEST_ARRAY}"][unit.index]
        for j, name in enumerate(names):
            array = root[f"{unit.split}/{name}"]
            try:
                data = _read_unit(array, unit.index)
            except DataError as e:
                problems.append(str(e))
                continue
            if not np.array_equal(_digest(data), stored[j]):
                problems.append(
                    f"array {array.path}: samples [{start}, {stop}) (chunks {array.path}/c/{unit.index}/*) "
                    "do not match their checksum"
                )
    return problems


def _read_unit(array: zarr.Array, row: int) -> np.ndarray:
    """All chunks of one chunk row along samples, read one by one so errors name a chunk."""
    grid = [range(-(-s // k)) for s, k in zip(array.shape[1:], array.chunks[1:], strict=True)]
    parts = {coords: read_chunk(array, (row, *coords)) for coords in np.ndindex(*map(len, grid))}
    start, stop = row * array.chunks[0], min((row + 1) * array.chunks[0], array.shape[0])
    out = np.empty((stop - start, *array.shape[1:]), dtype=array.dtype)
    for coords, part in parts.items():
        sel = tuple(slice(c * k, c * k + n) for c, k, n in zip(coords, array.chunks[1:], part.shape[1:], strict=True))
        out[(slice(None), *sel)] = part
    return out
