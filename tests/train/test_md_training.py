"""The next-frame task on a real trajectory (the adenylate kinase protein of MDAnalysisTests' GROMACS TPR + TRR,
periodic, with velocities) through the real trainer at sp = 2: every rank reads only the token chunks of its
block, and the run's metrics carry the static and constant-velocity references beside the model."""

import json

import MDAnalysisTests.datafiles as files
import numpy as np
import pytest

from dist_hyena.data import StreamingLoader, md_store
from dist_hyena.train.config import load_config
from tests.helpers.distributed import run_ranks

ATOMS = 3341  # the protein of the solvated system


def _train(rank, world, tmp_path):
    from dist_hyena.train import train

    return train(load_config("md_adk_solvated", [
        f"data.path={tmp_path / 'protein'}", f"run.out_dir={tmp_path / 'runs'}", "run.name=md",
        "train.steps=3", "eval.every=3", "checkpoint.every=0", "log.every=1", "model.mlp_token_chunk=1024"]))


@pytest.mark.timeout(400)
def test_md_trains_at_sp2_reading_only_its_chunks(tmp_path):
    store = md_store(tmp_path / "protein", files.TPR, [files.TRR], select="protein",
                     tokens_per_chunk=(ATOMS + 1) // 2)
    for rank in (0, 1):  # each sp rank decodes only its own token chunk, of every array
        loader = StreamingLoader(store, "train", 1, sp_rank=rank, sp_size=2)
        batches = list(loader)
        assert [b["x"].shape[1] for b in batches] == [1671 - rank] * 3
        reads = loader.reader.chunk_reads
        token_coord = {"positions": 2, "velocities": 2, "masses": 1, "charges": 1}
        assert reads and all(key.split("/c/")[1].split("/")[token_coord[key.split("/")[1]]] == str(rank)
                             for key in reads if key.split("/")[1] in token_coord), sorted(reads)
    summary = run_ranks(_train, 2, (tmp_path,), timeout=360)[0]
    records = [json.loads(line) for line in (tmp_path / "runs/md/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_mse" in r]
    assert evals and {"val_static_mse", "val_constant_velocity_mse", "test_mse", "test_static_mse"} <= evals[-1].keys()
    assert np.isfinite(summary["last_loss"])
    # the static reference is the squared displacement over 100 ps of the protein's atoms: a few Å²
    assert 1.0 < evals[-1]["val_static_mse"] < 20.0
