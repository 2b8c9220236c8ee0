"""Shared fixtures: a tiny config, and the tiny pipelines built once per session (helpers live in helpers.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dvt.config import Config
from tests.helpers import BIN, engine_env, make_config, tiny_repo


@pytest.fixture
def synthetic_config(tmp_path: Path) -> Config:
    return make_config(tmp_path, data={"dataset": "synthetic", "calibration_size": 100,
                                       "synthetic": {"train_size": 400, "test_size": 100}})


@pytest.fixture(scope="session")
def finished_pipeline(tmp_path_factory) -> Path:
    """The tiny pipeline of helpers.build_pipeline built once per session: fetched, the `dvt` and `single`
    runs trained, collected, budgeted and counted. Modules take a copy (`copy_pipeline`), never this."""
    from dvt.config import load_config
    from dvt.stages.budget import run as budget
    from dvt.stages.flops import run as flops
    from tests.helpers import build_pipeline

    params = build_pipeline(tmp_path_factory.mktemp("pipeline"))
    config = load_config(params)
    for run in ("dvt", "single"):
        budget(config, run=run)
        flops(config, run=run)
    return params


@pytest.fixture(scope="session")
def finished_engines(tmp_path_factory) -> dict[str, Path]:
    """The tiny pipeline of helpers.tiny_repo run to the end once by each engine, each in its own repo, once
    per session (test_pipeline_runs and test_before_after; tests copy them or only read)."""
    base = tmp_path_factory.mktemp("engines")
    dvc_root, snake_root = tiny_repo(base / "dvc"), tiny_repo(base / "snakemake")
    # Side by side, in two repos: most of each run is starting Python and importing torch, one core
    # each (about 70 s instead of 130 s for the two in turn).
    jobs = {name: subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=engine_env())
            for name, root, cmd in (("dvc", dvc_root, [str(BIN / "dvc"), "repro"]),
                                    ("snakemake", snake_root, [str(BIN / "snakemake"), "--cores", "1"]))}
    said = {name: job.communicate()[0] for name, job in jobs.items()}
    for name, job in jobs.items():
        assert job.returncode == 0, f"{name} failed:\n{said[name]}"
    assert "standalone resnet18_w16" in said["dvc"]  # the CNN's speed line names the CNN, not a token grid
    return {"dvc": dvc_root, "snakemake": snake_root}
