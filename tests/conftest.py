"""Shared fixtures: tiny configs and data written in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dvt.config import Config, from_dict

REPO = Path(__file__).resolve().parents[1]


def make_config(tmp_path: Path, **sections) -> Config:
    """A Config whose data and runs live under tmp_path; sections override the defaults."""
    data = {"root": str(tmp_path / "data"), **sections.pop("data", {})}
    return from_dict({"data": data, "runs_dir": str(tmp_path / "runs"), **sections})


@pytest.fixture
def synthetic_config(tmp_path: Path) -> Config:
    return make_config(tmp_path, data={"dataset": "synthetic", "calibration_size": 100,
                                       "synthetic": {"train_size": 400, "test_size": 100}})


def write_params_file(root: Path, base: dict, **changes) -> Path:
    """params.yaml under root from `base`; changes are dotted keys with "__" for ".", e.g. eval__q_step=0.2."""
    import yaml

    params = yaml.safe_load(yaml.safe_dump(base))
    params.setdefault("data", {})["root"] = str(root / "data")
    params["runs_dir"] = str(root / "runs")
    for dotted, value in changes.items():
        node = params
        *keys, last = dotted.split("__")
        for k in keys:
            node = node.setdefault(k, {})
        node[last] = value
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def finished_pipeline(tmp_path_factory) -> Path:
    """The tiny pipeline of tests/test_collect.py built once per session: fetched, the `dvt` and `single`
    runs trained, collected, budgeted and counted. Modules take a copy (`copy_pipeline`), never this."""
    from dvt.config import load_config
    from dvt.stages.budget import run as budget
    from dvt.stages.flops import run as flops
    from tests.test_collect import build_pipeline

    params = build_pipeline(tmp_path_factory.mktemp("pipeline"))
    config = load_config(params)
    for run in ("dvt", "single"):
        budget(config, run=run)
        flops(config, run=run)
    return params


def copy_pipeline(params: Path, root: Path) -> Path:
    """A copy of a built pipeline's data and runs under root, with its params.yaml pointing at them."""
    import shutil

    import yaml

    base = yaml.safe_load(params.read_text())
    shutil.copytree(base["data"]["root"], root / "data")
    shutil.copytree(base["runs_dir"], root / "runs")
    return write_params_file(root, base)


def random_images(rng: np.random.Generator, n: int, size: int, channels: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
