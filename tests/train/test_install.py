"""A regular install (not editable, no checkout beside it) trains the defaults from an empty directory.

The package is built from a copy of the project's files with the installed setuptools (no build
isolation, no dependencies: nothing is downloaded) into a target folder that is the child's only
source of ``dist_hyena``.
"""

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers.launch import REPO_ROOT, launch_env


@pytest.mark.timeout(600)
def test_installed_package_trains_from_an_empty_directory(tmp_path):
    source, target, work = tmp_path / "source", tmp_path / "site", tmp_path / "work"
    shutil.copytree(REPO_ROOT / "dist_hyena", source / "dist_hyena",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    assert (target / "dist_hyena" / "configs" / "default.yaml").is_file()
    assert (target / "dist_hyena" / "configs" / "deepspeed" / "zero1.json").is_file()
    work.mkdir()
    env = launch_env({"PYTHONPATH": str(target)})  # the installed copy only: not the checkout
    where = subprocess.run([sys.executable, "-c", "import dist_hyena; print(dist_hyena.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target)), where
    run = subprocess.run([sys.executable, "-m", "dist_hyena.train", "train.steps=20"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = work / "runs" / "default"
    assert (out / "model.pt").is_file() and (work / "data").is_dir()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in records) == 20
