"""Shared fixtures: a tiny config, and the tiny pipeline built once per session (helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvt.config import Config
from tests.helpers import make_config


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
