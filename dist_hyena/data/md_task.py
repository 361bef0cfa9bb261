"""Molecular-dynamics trajectories as next-frame samples (DESIGN §4.5).

Any topology + trajectory that MDAnalysis reads (PSF/DCD, GRO/TPR + XTC/TRR, PDB, PRMTOP/NetCDF, LAMMPS, ...)
becomes samples (frame t, frame t + delta): tokens are the selected atoms in topology order, the vectors their
positions (and velocities where every frame has them), the scalars per-atom invariants of the topology. Splits
are contiguous frame ranges in trajectory order, train first, separated by ``gap`` frames (neighbouring frames
are correlated: random frames would leak test into train); the test range is the end of the trajectory.

Periodic systems (any box shape): every molecule (a connected set of bonded atoms) is made whole at both frames
of a sample, each bond taken at its shortest periodic image, from the molecule's first atom outwards; then the
target frame's molecules are moved by the lattice vector that puts each one's centre nearest to where it was at
the input frame, so a molecule that crosses the box edge between t and t + delta does not jump. A topology
without bonds (GRO, PDB) is made whole residue by residue (each residue's atoms joined to its first atom): give a
topology with bonds (TPR, PSF, PRMTOP) to keep a whole protein whole. Lengths in Å, velocities in Å/ps
(MDAnalysis' units).

Reading a frame is deterministic, so the samples a rank writes do not depend on which rank writes them.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_hyena.data.layout import ArraySpec
from dist_hyena.data.store import DataError

# Per-atom invariants stored when the topology has them, as (store array, MDAnalysis attribute).
ATOM_SCALARS = (("masses", "masses"), ("charges", "charges"))
_DEFAULT_SPLIT_FRACTION = 0.1  # val and test frames each, of the trajectory, when not given
_ATOM_FRAMES_PER_UNIT = 1 << 18  # default samples per chunk: about this many atoms x frames per work unit


@dataclass(frozen=True)
class MDParams:
    """What an MD dataset is; stored in the store's attributes (with the files' sha256)."""

    topology: str
    trajectories: tuple[str, ...]
    select: str = "all"
    delta: int = 1
    stride: int = 1
    val_frames: int | None = None
    test_frames: int | None = None
    gap: int | None = None
    velocities: bool = True

    def __post_init__(self):
        for name in ("delta", "stride"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("val_frames", "test_frames", "gap"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a non-negative integer, got {value!r}")


def _attempt(make):
    """(make(), None), or (None, "Type: message") when it raises. MDAnalysis runs quietly: no warnings about the
    attributes it guesses for plain formats, and no second error from a reader that failed in __init__ and fails
    again when collected (its __del__ finds no file to close): the error is kept as text only, so the failed
    reader goes at once, while the unraisable hook is silenced."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return make(), None
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
        gc.collect()
        return None, error
    finally:
        sys.unraisablehook = hook


def _check_file(path: str, role: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{role} {path}: no such file")
    return p


def open_universe(topology: str, trajectories: tuple[str, ...] | list[str]):
    """An MDAnalysis Universe of the files, with errors that name the file at fault. The files are opened once;
    only when that fails is each one opened alone, to say which one and why."""
    import MDAnalysis as mda

    _check_file(topology, "topology")
    for t in trajectories:
        _check_file(t, "trajectory")
    universe, error = _attempt(lambda: mda.Universe(topology, *trajectories))
    if universe is not None:
        return universe
    top, top_error = _attempt(lambda: mda.Universe(topology))
    if top_error:
        raise ValueError(f"topology {topology}: MDAnalysis cannot read it ({top_error})")
    for t in trajectories:
        n_atoms = _atoms_in(t)
        if n_atoms is not None and n_atoms != top.atoms.n_atoms:
            raise ValueError(f"trajectory {t} has {n_atoms} atoms, topology {topology} has {top.atoms.n_atoms}")
        _, alone = _attempt(lambda t=t: mda.Universe(topology, t))
        if alone:
            raise ValueError(f"trajectory {t}: MDAnalysis cannot read it with topology {topology} ({alone})")
    raise ValueError(f"{', '.join(trajectories)} with topology {topology}: MDAnalysis cannot read them together "
                     f"({error})")


def _atoms_in(trajectory: str) -> int | None:
    """The atom count a trajectory file states by itself (DCD, XTC, TRR, NetCDF do), else None."""
    from MDAnalysis.coordinates.core import get_reader_for

    def count() -> int:
        reader = get_reader_for(trajectory)(trajectory)
        n = reader.n_atoms
        reader.close()
        return int(n)

    return _attempt(count)[0]  # None: a format that needs its topology to be read, or none MDAnalysis knows


def split_frames(n_frames: int, delta: int, val: int | None, test: int | None,
                 gap: int | None) -> dict[str, tuple[int, int]]:
    """Frame ranges [first, stop) of train, val and test, in that order along the trajectory, ``gap`` frames
    apart (default delta). Each range must hold delta + 1 frames (one sample); val/test default to 10% of the
    frames (at least delta + 1 each)."""
    if n_frames < delta + 1:
        raise ValueError(f"the trajectory has {n_frames} frame(s): a sample needs delta + 1 = {delta + 1}")
    gap = delta if gap is None else gap
    default = max(delta + 1, round(_DEFAULT_SPLIT_FRACTION * n_frames))
    val, test = (default if v is None else v for v in (val, test))
    train = n_frames - val - test - gap * ((val > 0) + (test > 0))
    if train < delta + 1:
        raise ValueError(f"{n_frames} frames leave {train} for training after {val} val and {test} test frames "
                         f"and gaps of {gap}: give fewer --val-frames / --test-frames, a smaller --gap or --delta")
    ranges, first = {}, 0
    for split, n in (("train", train), ("val", val), ("test", test)):
        if n == 0:
            continue
        if n < delta + 1:
            raise ValueError(f"{split}: {n} frame(s) hold no sample (delta + 1 = {delta + 1} needed)")
        ranges[split] = (first, first + n)
        first += n + gap
    return ranges


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bond_tree(n_atoms: int, pairs: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Breadth-first trees over the bond graph, one per connected molecule, rooted at its lowest atom, all
    grown together. -> (levels: [(atoms, their parents)] outwards from the roots, the root of every atom)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_atoms, n_atoms))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, n_atoms)
    np.minimum.at(first, label, np.arange(n_atoms))
    edges = np.concatenate([pairs, pairs[:, ::-1]])
    root = np.full(n_atoms, -1)
    root[first] = first
    frontier = np.zeros(n_atoms, dtype=bool)
    frontier[first] = True
    levels = []
    while True:
        step = edges[frontier[edges[:, 0]] & (root[edges[:, 1]] < 0)]
        if not len(step):
            return levels, root
        child, pick = np.unique(step[:, 1], return_index=True)
        parent = step[pick, 0]
        root[child] = root[parent]
        levels.append((child, parent))
        frontier[:] = False
        frontier[child] = True


_NEIGHBOUR_CELLS = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T  # [27, 3]


def _to_nearest_image(d: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The lattice translations [n, 3] that make the vectors d [n, 3] their shortest periodic images: rounding
    the fractional coordinates, then the best of the 27 neighbouring cells (rounding alone is exact only for a
    rectangular box)."""
    shift = -np.round(d @ np.linalg.inv(cell)) @ cell
    options = (d + shift)[:, None, :] + (_NEIGHBOUR_CELLS @ cell)[None]
    best = np.linalg.norm(options, axis=-1).argmin(axis=1)
    return shift + (_NEIGHBOUR_CELLS @ cell)[best]


def _cell(box: np.ndarray) -> np.ndarray:
    """The box vectors (rows) of MDAnalysis dimensions [a, b, c, alpha, beta, gamma]."""
    from MDAnalysis.lib.mdamath import triclinic_vectors

    return triclinic_vectors(np.asarray(box, dtype=np.float32)).astype(np.float64)


class MDTask:
    """Next-frame samples of one trajectory: positions (velocities) [b, 2, N, 3], per-atom scalars [b, N],
    frame_index [b, 2]. Opening it reads the files' headers (every rank does: each reads its own frames)."""

    task = "md"

    def __init__(self, params: MDParams):
        self.params = p = params
        self.universe = open_universe(p.topology, p.trajectories)
        try:
            self.atoms = self.universe.select_atoms(p.select)
        except Exception as e:
            raise ValueError(f"--select {p.select!r}: not a selection MDAnalysis understands ({e})") from None
        if self.atoms.n_atoms == 0:
            raise ValueError(f"--select {p.select!r} selects no atom of {p.topology}")
        traj = self.universe.trajectory
        try:
            self.frames = split_frames(len(traj), p.delta, p.val_frames, p.test_frames, p.gap)
        except ValueError as e:
            raise ValueError(f"{', '.join(p.trajectories)}: {e}") from None
        self.sizes = {s: len(range(a, b - p.delta, p.stride)) for s, (a, b) in self.frames.items()}
        self.has_velocities = p.velocities and traj.ts.has_velocities
        self.scalars = [name for name, attr in ATOM_SCALARS if hasattr(self.atoms, attr)]
        box = traj.ts.dimensions
        self.periodic = box is not None and bool(np.all(box[:3] > 0))
        self.bonds = "none"
        if self.periodic:
            self._plan_whole()
        self.box = None if box is None else [float(v) for v in box]

    @property
    def n_tokens(self) -> int:
        return self.atoms.n_atoms

    def attrs(self) -> dict:
        import MDAnalysis as mda

        p = self.params
        files = [p.topology, *p.trajectories]
        return {
            "task": self.task,
            "generator": "dist_hyena.data.md_task",
            "params": {"select": p.select, "delta": p.delta, "stride": p.stride, "frames": self.frames,
                       "velocities": self.has_velocities, "bonds": self.bonds, "periodic": self.periodic},
            "sources": [{"path": str(Path(f).resolve()), "sha256": sha256_of(f)} for f in files],
            "mdanalysis_version": mda.__version__,
            "n_tokens": self.n_tokens,
            "vector_in": 2 if self.has_velocities else 1,
            "scalar_in": len(self.scalars),
            "scalars": self.scalars,
            "token_order": "topology",
            "input_frame": 0,
            "target_frame": 1,
            "length_unit": "angstrom",
            "velocity_unit": "angstrom/ps",
            "time_step_ps": float(self.universe.trajectory.dt) * p.delta,
            "box": self.box,
        }

    def samples_per_chunk(self) -> int:
        """The default chunk length along samples (the unit of work per rank): about 2^18 atom-frames."""
        return max(1, min(64, _ATOM_FRAMES_PER_UNIT // (2 * self.n_tokens)))

    def array_specs(self, tokens_per_chunk: int) -> list[ArraySpec]:
        n, t = self.n_tokens, tokens_per_chunk
        specs = [ArraySpec("positions", (2, n, 3), (1, t, 3), token_axis=2)]
        if self.has_velocities:
            specs.append(ArraySpec("velocities", (2, n, 3), (1, t, 3), token_axis=2))
        specs += [ArraySpec(name, (n,), (t,), token_axis=1) for name in self.scalars]
        specs.append(ArraySpec("frame_index", (2,), (2,)))
        return specs

    def frame_pair(self, split: str, index: int) -> tuple[int, int]:
        first = self.frames[split][0] + index * self.params.stride
        return first, first + self.params.delta

    def generate(self, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples [start, stop) of a split, read from the trajectory (float32)."""
        pairs = [self.frame_pair(split, i) for i in range(start, stop)]
        pos, vel = [], []
        for pair in pairs:
            frames = [self._read(f) for f in pair]
            x = [f[0] for f in frames]
            if self.periodic:
                x[1] = self._follow(x[0], x[1], frames[1][2])
            pos.append(np.stack(x))
            vel.append(np.stack([f[1] for f in frames]) if self.has_velocities else None)
        out = {"positions": np.stack(pos).astype(np.float32)}
        if self.has_velocities:
            out["velocities"] = np.stack(vel).astype(np.float32)
        for name, attr in ATOM_SCALARS:
            if name in self.scalars:
                out[name] = np.broadcast_to(getattr(self.atoms, attr).astype(np.float32), (len(pairs), self.n_tokens))
        out["frame_index"] = np.asarray(pairs, dtype=np.float32)
        return out

    def _read(self, frame: int):
        """(positions, velocities or None, box) of the selected atoms at one frame, molecules made whole."""
        ts = self.universe.trajectory[frame]
        where = f"{self._file_of(frame)} frame {frame}"
        if self.periodic:
            x = self._whole(self.molecules.positions.astype(np.float64), ts.dimensions)[self._selected]
        else:
            x = self.atoms.positions
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            bad = self.atoms.indices[~np.isfinite(x).all(axis=1)]
            raise DataError(f"{where}: non-finite coordinates for {len(bad)} atom(s) (first: atom index {bad[0]}); "
                            "nothing of this sample was written")
        v = None
        if self.has_velocities:
            if not ts.has_velocities:
                raise DataError(f"{where} has no velocities though the first frame has: re-run with "
                                "--no-velocities")
            v = np.asarray(self.atoms.velocities, dtype=np.float64)
        return x, v, None if ts.dimensions is None else np.asarray(ts.dimensions, dtype=np.float64)

    def _plan_whole(self) -> None:
        """The bond tree that makes molecules whole: the molecules holding the selected atoms, and levels of
        (atoms, their parent atoms) from each molecule's first atom outwards (indices into ``self.molecules``)."""
        u = self.universe
        has_bonds = hasattr(u, "bonds") and len(u.bonds) > 0
        self.bonds = "topology" if has_bonds else "residues"
        groups = self.atoms.fragments if has_bonds else self.atoms.residues
        self.molecules = u.atoms[np.unique(np.concatenate([g.atoms.indices for g in groups]))]
        local = np.full(u.atoms.n_atoms, -1)
        local[self.molecules.indices] = np.arange(self.molecules.n_atoms)
        if has_bonds:
            pairs = local[np.asarray(self.molecules.bonds.indices).reshape(-1, 2)]
        else:  # each atom joined to its residue's first atom
            first = np.asarray([g.atoms.indices[0] for g in groups])[np.searchsorted(
                np.asarray([g.resindex for g in groups]), self.molecules.resindices)]
            pairs = np.stack([local[first], np.arange(self.molecules.n_atoms)], axis=1)
        pairs = pairs[(pairs >= 0).all(axis=1) & (pairs[:, 0] != pairs[:, 1])]
        self._levels, self._root = bond_tree(self.molecules.n_atoms, pairs)
        self._selected = local[self.atoms.indices]
        # each selected atom's molecule, numbered 0.. (for the per-molecule centres of _follow)
        _, self._molecule_of = np.unique(self._root[self._selected], return_inverse=True)
        self._molecule_sizes = np.bincount(self._molecule_of)[:, None]

    def _whole(self, x: np.ndarray, box: np.ndarray) -> np.ndarray:
        cell = _cell(box)
        inverse = np.linalg.inv(cell)
        for child, parent in self._levels:  # a bond is far shorter than the box: rounding finds its nearest image
            d = x[child] - x[parent]
            x[child] = x[parent] + d - np.round(d @ inverse) @ cell
        return x

    def _follow(self, x0: np.ndarray, x1: np.ndarray, box: np.ndarray) -> np.ndarray:
        """x1 with each molecule moved by the lattice vector that brings its centre (mean of its selected
        atoms) nearest to where it was in x0: the minimum image, in any box shape."""
        mol, n = self._molecule_of, len(self._molecule_sizes)
        moved = np.stack([np.bincount(mol, x1[:, k] - x0[:, k], n) for k in range(3)], axis=1) / self._molecule_sizes
        return x1 + _to_nearest_image(moved, _cell(box))[mol]

    def _file_of(self, frame: int) -> str:
        trajs = self.params.trajectories
        if len(trajs) == 1:
            return trajs[0]
        starts = np.cumsum([0, *[r.n_frames for r in self.universe.trajectory.readers]])
        return trajs[int(np.searchsorted(starts, frame, side="right")) - 1]
