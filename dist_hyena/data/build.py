"""Dataset presets and the preprocessing driver shared by the CLIs and in-process use.

`build_store` runs on every rank of a communicator (or on one process via SerialComm):
rank 0 prepares the store and the list of missing units, every rank writes its share,
rank 0 finalises. An error on rank 0 during preparation reaches every rank (no hangs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm import tqdm

from dist_hyena.data import store
from dist_hyena.data.layout import unit_range
from dist_hyena.data.md_task import MDParams, MDTask
from dist_hyena.data.nbody_task import NBodyParams, NBodyTask
from dist_hyena.data.recall_task import RecallTask
from dist_hyena.data.work import SerialComm, my_share

# Defaults per preset: task parameters, split sizes, chunking. Everything is overridable.
PRESETS = {
    # The published 5-body benchmark (EGNN's charged system; frames 30 -> 40, which the
    # reference code records after steps 3100 and 4100: its frame k is step 100 (k + 1)).
    "nbody5": {
        "task": "nbody",
        "params": {"n_bodies": 5, "integrator": "nri", "record_steps": (3100, 4100)},
        "sizes": {"train": 3000, "val": 2000, "test": 2000},
        "samples_per_chunk": 500,
    },
    # Softened, rotation-invariant, leapfrog; frame 0 and one later frame.
    "manybody": {
        "task": "nbody",
        "params": {
            "n_bodies": 4096,
            "integrator": "leapfrog",
            "record_steps": (0, 100),
            "softening": 0.1,
            "token_order": "radial",
        },
        "sizes": {"train": 100, "val": 20, "test": 20},
        "samples_per_chunk": 1,
    },
    "recall": {
        "task": "recall",
        "params": {"n_tokens": 1024, "vocab_size": 4, "variant": "random"},
        "sizes": {"train": 2000, "val": 200, "test": 200},
        "samples_per_chunk": 64,
    },
}
_MAX_TOKENS_PER_CHUNK = 65536


class PreparationError(store.DataError):
    """The store could not be prepared; every rank raises it (none is left waiting)."""



def make_task(preset: str, seed: int, device: str | None = None, **overrides):
    """The task object of a preset with some parameters overridden (None = keep)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets are {sorted(PRESETS)}")
    spec = PRESETS[preset]
    params = {**spec["params"], **{k: v for k, v in overrides.items() if v is not None}}
    if spec["task"] == "nbody":
        known = {f.name for f in dataclasses.fields(NBodyParams)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown n-body parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        params["record_steps"] = tuple(params["record_steps"])
        return NBodyTask(NBodyParams(**params), seed, device=device)
    return RecallTask(seed=seed, **params)


def build_store(
    task,
    out: str | Path,
    seed: int,
    sizes: dict[str, int],
    samples_per_chunk: int,
    tokens_per_chunk: int | None = None,
    comm=None,
    progress: bool = True,
) -> Path:
    """Write (or complete) the store at `out`; call on every rank of `comm`. -> out."""
    comm = comm or SerialComm()
    out = Path(out)
    tokens_per_chunk = tokens_per_chunk or min(task.n_tokens, _MAX_TOKENS_PER_CHUNK)
    specs = task.array_specs(tokens_per_chunk)
    plan, error = None, None
    if comm.rank == 0:
        try:
            attrs = store.dataset_attrs(task.attrs(), specs, sizes, seed, samples_per_chunk, tokens_per_chunk)
            plan = store.prepare(out, attrs, specs)
        except (store.DataError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        except OSError as e:
            error = f"cannot create the store at {out}: {_os_error(e)}"
    plan, error = comm.bcast((plan, error), root=0)
    if error:
        raise PreparationError(error)
    mine = my_share(plan, comm.rank, comm.size)
    bar = tqdm(mine, desc=f"{out.name} rank 0/{comm.size}", unit="chunk", disable=not progress or comm.rank != 0)
    for unit in bar:
        start, stop = unit_range(unit.index, sizes[unit.split], samples_per_chunk)
        data = task.generate(unit.split, start, stop)
        try:
            store.write_unit(out, unit, data)
        except OSError as e:  # disk full, read-only or vanished file system: the unit stays missing
            raise store.DataError(f"writing {unit.split} samples [{start}, {stop}) of {out}: {_os_error(e)}; "
                                  "the store is not marked complete: fix this and re-run the same command to "
                                  "complete it") from e
    comm.barrier()
    if comm.rank == 0 and plan:
        store.finalize(out)
    comm.barrier()
    return out


def _os_error(e: OSError) -> str:
    """`strerror: file` of an OS error, without Python's `[Errno n]` noise."""
    return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")


def generate_store(
    preset: str,
    out: str | Path,
    seed: int = 0,
    *,
    train: int | None = None,
    val: int | None = None,
    test: int | None = None,
    samples_per_chunk: int | None = None,
    tokens_per_chunk: int | None = None,
    device: str | None = None,
    progress: bool = False,
    **params,
) -> Path:
    """Generate (or complete) a dataset store in this process, by the same code path as
    the CLIs. `params` override the preset's task parameters (e.g. n_bodies=1024,
    token_order="radial", n_tokens=4097, variant="fixed"). -> out."""
    task = make_task(preset, seed, device=device, **params)
    defaults = PRESETS[preset]
    sizes = {
        **defaults["sizes"],
        **{k: v for k, v in (("train", train), ("val", val), ("test", test)) if v is not None},
    }
    return build_store(
        task,
        out,
        seed,
        sizes,
        samples_per_chunk or defaults["samples_per_chunk"],
        tokens_per_chunk,
        progress=progress,
    )


def md_store(
    out: str | Path,
    topology: str,
    trajectories: list[str] | tuple[str, ...],
    *,
    samples_per_chunk: int | None = None,
    tokens_per_chunk: int | None = None,
    comm=None,
    progress: bool = False,
    **params,
) -> Path:
    """Preprocess (or complete) an MD trajectory store, by the same code path as ``datasets/md.py``; call on
    every rank of ``comm``. ``params``: :class:`MDParams`' fields (select, delta, stride, val_frames,
    test_frames, gap, velocities). -> out."""
    task = MDTask(MDParams(topology, tuple(trajectories), **params))
    return build_store(task, out, 0, task.sizes, samples_per_chunk or task.samples_per_chunk(), tokens_per_chunk,
                       comm=comm, progress=progress)
