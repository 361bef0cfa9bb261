"""Real molecular-dynamics trajectories (MDAnalysisTests' adenylate kinase: CHARMM PSF + DCD, GROMACS TPR +
XTC / TRR) preprocessed into stores: the store holds what MDAnalysis reads, MPI ranks write the serial bytes,
a killed run completes to the clean bytes, --verify names a corrupted chunk, and bad input is refused with a
message naming the file, leaving nothing marked complete."""

import os
import shutil
import signal
import time
from pathlib import Path

import MDAnalysis as mda
import MDAnalysisTests.datafiles as files
import numpy as np
import pytest
import zarr

from dist_hyena.data import DataError, StoreReader, md_store, open_store, verify
from dist_hyena.data.md_task import _cell
from tests.data.conftest import script_cmd, tree_bytes
from tests.helpers.launch import finish, start

CHARMM = dict(topology=files.PSF, trajectories=[files.DCD], select="protein and not name H*", delta=2, stride=3)
# The solvated protein: the protein and a slab of water, periodic (a rhombic dodecahedron), with velocities.
GROMACS = dict(topology=files.TPR, trajectories=[files.TRR], select="protein or (resname SOL and index 30000:32999)",
               val_frames=2, test_frames=2, gap=0)


def _cli(out: Path, topology: str, trajectories: list[str], **options) -> list[str]:
    args = ["--out", str(out), "--topology", topology, "--trajectory", *trajectories, "--no-progress"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def charmm_store(tmp_path_factory):
    return md_store(tmp_path_factory.mktemp("md") / "adk", **CHARMM, samples_per_chunk=4, tokens_per_chunk=1000)


@pytest.fixture(scope="module")
def gromacs_store(tmp_path_factory):
    return md_store(tmp_path_factory.mktemp("md") / "adk_solvated", **GROMACS, samples_per_chunk=2)


def test_charmm_store_is_what_mdanalysis_reads(charmm_store):
    u = mda.Universe(files.PSF, files.DCD)
    atoms = u.select_atoms(CHARMM["select"])
    root = zarr.open_group(charmm_store, mode="r")  # a plain zarr read
    attrs = root.attrs.asdict()
    assert attrs["length_unit"] == "angstrom" and attrs["n_tokens"] == atoms.n_atoms == 1656
    assert attrs["params"]["frames"] == {"train": [0, 74], "val": [76, 86], "test": [88, 98]}
    assert [s["sha256"] for s in attrs["sources"]][0] == __import__("hashlib").sha256(
        Path(files.PSF).read_bytes()).hexdigest()
    seen = []
    for split in ("train", "val", "test"):
        frames = root[f"{split}/frame_index"][:].astype(int)
        positions = root[f"{split}/positions"][:]
        assert (frames[:, 1] - frames[:, 0] == 2).all() and (np.diff(frames[:, 0]) == 3).all()
        for (t, t_next), pair in zip(frames, positions, strict=True):
            for frame, stored in ((t, pair[0]), (t_next, pair[1])):
                u.trajectory[frame]
                np.testing.assert_array_equal(stored, atoms.positions)
        np.testing.assert_array_equal(root[f"{split}/masses"][0], atoms.masses.astype(np.float32))
        np.testing.assert_array_equal(root[f"{split}/charges"][-1], atoms.charges.astype(np.float32))
        seen.append(frames)
    assert seen[0].max() < seen[1].min() and seen[1].max() < seen[2].min()  # contiguous ranges, in order
    assert "velocities" not in root["train"]  # a DCD has none


def test_gromacs_store_is_made_whole_and_continuous(gromacs_store):
    u = mda.Universe(files.TPR, files.TRR)
    atoms = u.select_atoms(GROMACS["select"])
    root = zarr.open_group(gromacs_store, mode="r")
    assert root.attrs["params"]["bonds"] == "topology" and root.attrs["vector_in"] == 2
    frames = root["train/frame_index"][:].astype(int)
    positions, velocities = root["train/positions"][:], root["train/velocities"][:]
    bonds = np.searchsorted(atoms.indices, atoms.bonds.indices[np.isin(atoms.bonds.indices, atoms.indices).all(1)])
    protein = np.isin(atoms.indices, u.select_atoms("protein").indices)
    for (t, t_next), pair, vel in zip(frames, positions, velocities, strict=True):
        for frame, stored, v in ((t, pair[0], vel[0]), (t_next, pair[1], vel[1])):
            ts = u.trajectory[frame]
            np.testing.assert_array_equal(v, atoms.velocities)
            # the stored positions are the file's, each moved by a whole number of box vectors
            shift = (stored.astype(np.float64) - atoms.positions) @ np.linalg.inv(_cell(ts.dimensions))
            assert np.abs(shift - np.round(shift)).max() < 1e-4
            assert np.linalg.norm(stored[bonds[:, 0]] - stored[bonds[:, 1]], axis=1).max() < 2.0  # whole
            # the protein equals MDAnalysis' own unwrap up to one translation
            whole = atoms.unwrap(compound="fragments", reference="cog", inplace=False)[protein]
            offset = stored[protein] - whole
            assert np.abs(offset - offset[0]).max() < 1e-3
        # no molecule jumps across the box: no lattice vector brings a residue's centre nearer where it was
        moved = np.stack([np.bincount(atoms.resindices, pair[1, :, k] - pair[0, :, k]) for k in range(3)], axis=1)
        moved = moved[np.unique(atoms.resindices)] / np.bincount(atoms.resindices)[np.unique(atoms.resindices)][:, None]
        lattice = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T @ _cell(ts.dimensions)
        images = np.linalg.norm(moved[:, None] + lattice[None], axis=-1)
        assert (images.min(axis=1) >= np.linalg.norm(moved, axis=1) - 1e-3).all()


def test_reader_gives_the_next_frame_task(gromacs_store):
    reader = StoreReader(gromacs_store, "val")
    batch = reader.read(np.array([0]), 100, 200)
    assert batch["x"].shape == (1, 100, 2, 3) and batch["f"].shape == (1, 100, 2) and batch["y"].shape == (1, 100, 1, 3)
    root = zarr.open_group(gromacs_store, mode="r")
    np.testing.assert_array_equal(batch["y"][0, :, 0], root["val/positions"][0, 1, 100:200])
    np.testing.assert_array_equal(batch["x"][0, :, 1], root["val/velocities"][0, 0, 100:200])
    np.testing.assert_array_equal(batch["f"][0, :, 1], root["val/charges"][0, 100:200])


@pytest.mark.timeout(240)
def test_mpi_store_equals_serial_and_verify_names_a_corrupt_chunk(charmm_store, tmp_path):
    mpi = tmp_path / "mpi"
    options = {k: v for k, v in CHARMM.items() if k not in ("topology", "trajectories")}
    proc = start(script_cmd("md.py", _cli(mpi, files.PSF, [files.DCD], samples_per_chunk=4, tokens_per_chunk=1000,
                                          **options), ranks=2))
    helped = start(script_cmd("md.py", ["--help"]))
    finish(proc, timeout=180)
    assert tree_bytes(mpi) == tree_bytes(charmm_store)
    help_text = finish(helped, timeout=60)
    for option in ("--topology", "--trajectory", "--select", "--delta", "--stride", "--gap", "--verify"):
        assert option in help_text
    chunk = mpi / "test/positions/c/0/1/1/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = verify(mpi)
    assert any("test/positions" in p and "c/0/1/1/0" in p and "corrupt" in p for p in problems), problems
    bad = start(script_cmd("md.py", ["--out", str(mpi), "--verify"]))
    out = bad.communicate(timeout=60)[0]
    assert bad.returncode == 1 and "c/0/1/1/0" in out


@pytest.mark.timeout(240)
def test_killed_run_then_rerun_gives_the_clean_store(tmp_path):
    out = tmp_path / "killed"
    args = _cli(out, files.TPR, [files.XTC], samples_per_chunk=1, tokens_per_chunk=2048, val_frames=2,
                test_frames=2, gap=0)
    proc = start(script_cmd("md.py", args))
    digests = out / "train" / "unit_sha256" / "c"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(digests.glob("*"))) < 2:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = len(list(digests.glob("*")))
    assert 2 <= done < 5, f"{done} of 5 train units done when the run was killed"
    with pytest.raises(DataError, match="incomplete"):
        open_store(out)
    finish(start(script_cmd("md.py", args)), timeout=180)
    clean = md_store(tmp_path / "clean", files.TPR, [files.XTC], samples_per_chunk=1, tokens_per_chunk=2048,
                     val_frames=2, test_frames=2, gap=0)
    assert tree_bytes(out) == tree_bytes(clean)


def _nan_trajectory(path: Path) -> Path:
    """A 3-atom, 4-frame XYZ trajectory whose frame 2 holds a NaN coordinate."""
    frames = []
    for k in range(4):
        rows = [f"C {i + 0.1 * k:.3f} {2.0 * i:.3f} 0.000" for i in range(3)]
        if k == 2:
            rows[1] = "C nan 2.000 0.000"
        frames.append("3\nframe\n" + "\n".join(rows) + "\n")
    path.write_text("".join(frames))
    return path


def _bad_inputs(tmp: Path) -> dict:
    junk = tmp / "junk.dcd"
    junk.write_bytes(b"this is not a trajectory" * 10)
    nan = _nan_trajectory(tmp / "nan.xyz")
    occupied = tmp / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    return {  # case: (md_store arguments, words the message must hold)
        "missing file": (dict(topology=files.PSF, trajectories=[str(tmp / "nope.dcd")]), ["nope.dcd", "no such file"]),
        "unreadable format": (dict(topology=files.PSF, trajectories=[str(junk)]), ["junk.dcd", "cannot read"]),
        "atom counts differ": (dict(topology=files.PSF, trajectories=[files.XTC]),
                               [Path(files.XTC).name, "47681 atoms", "3341"]),
        "empty selection": (dict(topology=files.PSF, trajectories=[files.DCD], select="resname XYZ"),
                            ["resname XYZ", "selects no atom", Path(files.PSF).name]),
        "too few frames": (dict(topology=files.PSF, trajectories=[files.DCD], delta=98), ["98 frame(s)", "99"]),
        "NaN coordinates": (dict(topology=str(nan), trajectories=[str(nan)], val_frames=0, test_frames=0, gap=0),
                            ["nan.xyz", "frame 2", "non-finite"]),
        "output is another directory": (dict(topology=files.PSF, trajectories=[files.DCD], out=occupied),
                                        ["occupied", "not a zarr store"]),
    }


@pytest.mark.parametrize("case", ["missing file", "unreadable format", "atom counts differ", "empty selection",
                                  "too few frames", "NaN coordinates", "output is another directory"])
def test_bad_input_is_named_and_nothing_is_complete(case, tmp_path):
    kwargs, words = _bad_inputs(tmp_path)[case]
    out = kwargs.pop("out", tmp_path / "store")
    with pytest.raises((ValueError, FileNotFoundError, DataError)) as e:
        md_store(out, **kwargs)
    for word in words:
        assert word in str(e.value), (word, str(e.value))
    if (out / "zarr.json").exists():
        assert not zarr.open_group(out, mode="r").attrs.get("complete")
    if case == "output is another directory":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.timeout(120)
def test_cli_reports_bad_input_with_exit_status_1(tmp_path):
    proc = start(script_cmd("md.py", _cli(tmp_path / "s", files.PSF, [str(tmp_path / "nope.dcd")])))
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 1 and "nope.dcd: no such file" in out and "Traceback" not in out
    assert not (tmp_path / "s").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
