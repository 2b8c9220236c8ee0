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


def random_images(rng: np.random.Generator, n: int, size: int, channels: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
