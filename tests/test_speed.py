"""Real early exit equals the simulation from the stored logits; `dvt speed` and its refusals."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from dvt.cli import main
from dvt.config import Config, load_config
from dvt.data.loading import load_split
from dvt.inference import early_exit_predict
from dvt.logits import read_logits
from dvt.models import Cascade, native
from dvt.run_models import model_for_run
from dvt.stages import fetch
from dvt.stages.collect import run as collect
from dvt.stages.speed import BATCH_SEED
from dvt.stages.speed import run as speed
from dvt.thresholds import assign_exits
from dvt.weights import load_weights
from tests.helpers import copy_pipeline, save_random_checkpoint, write_pipeline_params

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # One thread, as dvt train and dvt speed use by default (two cores shared with other work make
    # more threads slow). The math libraries pick kernels by batch size and thread count;
    # dvt.inference.pad_rows keeps every subset on the kernels of a full batch.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline(finished_pipeline, tmp_path_factory) -> Path:
    return copy_pipeline(finished_pipeline, tmp_path_factory.mktemp("speed"))


def loaded(config: Config, run: str) -> Cascade:
    model = model_for_run(config, run)
    load_weights(model, config.run_dir(run) / "checkpoint.pt", strict=True)
    return model.eval()


def split_images(config: Config, split: str) -> torch.Tensor:
    dataset = load_split(config, split)
    return dataset.__getitems__(list(range(len(dataset))))[0]  # (n, C, S, S), sample order


def simulated(config: Config, run: str, split: str, T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Early exit replayed from logits.parquet: (pred (n,), exit (n,), confidence there (n,))."""
    stored = read_logits(config.run_dir(run) / "logits.parquet")[split]
    exits = assign_exits(stored.confidence, T)
    rows = np.arange(len(exits))
    return stored.pred[rows, exits], exits, stored.confidence[rows, exits]


def assert_real_equals_simulated(config: Config, run: str, split: str, T: np.ndarray, *,
                                 chunks: tuple[int, ...] = ()) -> np.ndarray:
    model, x = loaded(config, run), split_images(config, split)
    want_pred, want_exit, want_confidence = simulated(config, run, split, T)
    pred, exit_index, confidence = early_exit_predict(model, x, T)
    np.testing.assert_array_equal(exit_index, want_exit)
    np.testing.assert_array_equal(pred, want_pred)
    np.testing.assert_array_equal(confidence, want_confidence)
    # Any batching gives the same answer, a lone image included.
    for size in chunks:
        parts = [early_exit_predict(model, x[s:s + size], T) for s in range(0, len(x), size)]
        np.testing.assert_array_equal(np.concatenate([p for p, _, _ in parts]), want_pred)
        np.testing.assert_array_equal(np.concatenate([e for _, e, _ in parts]), want_exit)
    return exit_index


@pytest.mark.parametrize("split", ["calibration", "test"])
def test_real_early_exit_equals_simulated_at_every_budget(pipeline, split):
    # On calibration each threshold is some sample's stored confidence: a tie the real path must
    # reproduce to the last bit (>= sends it out).
    config = load_config(pipeline)
    frame = pd.read_csv(config.run_dir("dvt") / "budget.csv")
    T = frame[[f"threshold_{k}" for k in range(3)]].to_numpy()
    seen = set()
    for p, row in enumerate(T, start=1):
        exits = assert_real_equals_simulated(config, "dvt", split, row, chunks=(1, 7, 33) if p == 10 else ())
        seen |= set(exits.tolist())
    assert seen == {0, 1, 2}


def test_real_early_exit_equals_simulated_with_random_thresholds(pipeline):
    config = load_config(pipeline)
    conf = read_logits(config.run_dir("dvt") / "logits.parquet")["test"].confidence
    rng = np.random.default_rng(0)
    for i in range(10):
        T = rng.uniform(conf.min(axis=0), conf.max(axis=0))
        assert_real_equals_simulated(config, "dvt", "test", T, chunks=(1, 6, 13) if i < 2 else ())


@pytest.mark.parametrize("feature_reuse,relation_reuse", [(True, False), (False, True), (False, False)])
def test_real_early_exit_equals_simulated_for_every_reuse_setting(tmp_path, feature_reuse, relation_reuse):
    params = write_pipeline_params(tmp_path, runs={"v": {"grids": [2, 4, 8], "feature_reuse": feature_reuse,
                                               "relation_reuse": relation_reuse}})
    config = load_config(params)
    fetch.run(config)
    save_random_checkpoint(config, "v")
    collect(config, run="v")
    conf = read_logits(config.run_dir("v") / "logits.parquet")["test"].confidence
    T = np.quantile(conf, [0.6, 0.5, 0.0], axis=0).diagonal()  # about 40% leave at exit 1, then half
    exits = assert_real_equals_simulated(config, "v", "test", T, chunks=(1, 9))
    assert set(exits.tolist()) == {0, 1, 2}


def test_speed_json_records_static_and_early_exit_throughput(pipeline):
    config = load_config(pipeline)
    result = speed(config, run="dvt")
    stored = json.loads((config.run_dir("dvt") / "speed.json").read_text())
    assert stored == result
    assert stored["device"] == "cpu" and stored["threads"] == 1 and stored["batch_size"] == 32
    if platform.libc_ver()[0] == "glibc":  # timed with freed memory kept (dvt.timing.keep_freed_memory)
        assert stored["allocator"] == "glibc, freed memory kept (mallopt)"
    assert stored["native_kernel"] is native.available()  # this cascade reuses relations, on the CPU
    static = stored["static"]
    assert set(static["exits"]) == {"exit1", "exit2", "exit3"}
    assert static["cascade"] == static["exits"]["exit3"] and static["standalone"]["grid"] == 8
    assert set(stored["dynamic"]) == {"p5", "p10"}
    frame = pd.read_csv(config.run_dir("dvt") / "budget.csv").set_index("budget")
    stored_test = read_logits(config.run_dir("dvt") / "logits.parquet")["test"]
    batch = np.random.default_rng(BATCH_SEED).choice(100, size=32, replace=False)
    for name, d in stored["dynamic"].items():
        T = frame.loc[d["budget"], [f"threshold_{k}" for k in range(3)]].to_numpy(dtype=float)
        assert d["thresholds"] == T.tolist()
        # The exit shares seen on the timed batch are the simulation's on those test images.
        exits = assign_exits(stored_test.confidence[batch], T)
        assert d["exit_fractions"] == pytest.approx(np.bincount(exits, minlength=3) / 32)
        gmacs = np.dot(d["exit_fractions"], [static["exits"][f"exit{k}"]["gmacs"] for k in (1, 2, 3)])
        assert d["gmacs"] == pytest.approx(gmacs)
        for ref in ("vs_cascade", "vs_standalone"):
            r = d[ref]
            assert r["efficiency"] == pytest.approx(r["measured"] / r["ideal"]) and r["measured"] > 0
        assert d["vs_cascade"]["ideal"] == pytest.approx(static["cascade"]["gmacs"] / d["gmacs"])


def test_speed_of_a_one_exit_run_is_static_only(pipeline):
    result = speed(load_config(pipeline), run="single")
    static = result["static"]
    assert result["dynamic"] == {} and static["standalone"] == {"grid": 4, **static["cascade"]}


@pytest.mark.parametrize("override, message", [
    # (refused when params load, before any engine deletes a speed.json)
    ("speed.budgets=[5,50]", "speed.budgets = [5, 50] is not allowed: budget indices run 1..eval.num_budgets = 20"),
    ("speed.device=cuda", "no CUDA device is available here"),
])
def test_bad_speed_input(pipeline, capsys, override, message):
    if "cuda" in override and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["speed", "--params", str(pipeline), "--run", "dvt", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_speed_needs_a_checkpoint(pipeline, capsys):
    assert main(["speed", "--params", str(pipeline), "--run", "untrained"]) == 2
    assert "train it first with `dvt train --run untrained --seed 42`" in capsys.readouterr().err


def test_unpadded_early_exit_runs_lone_images_as_one_row(pipeline, monkeypatch):
    """pad=False (latency): a sub-batch of fewer than 4 rows runs as it is, and decides as the padded one
    does up to float rounding; with pad=True every model call sees at least 4 rows."""
    config = load_config(pipeline)
    model = loaded(config, "dvt")
    x = split_images(config, "test")[:3]
    T = np.array([0.0, 0.0, -np.inf])  # everybody leaves at exit 1
    seen = []
    forward_exit = model.forward_exit
    monkeypatch.setattr(model, "forward_exit", lambda k, xs, state: seen.append(len(xs)) or forward_exit(k, xs, state))
    for i in range(3):
        seen.clear()
        lone = early_exit_predict(model, x[i:i + 1], T, pad=False)
        assert seen == [1]
        seen.clear()
        padded = early_exit_predict(model, x[i:i + 1], T)
        assert seen == [4]
        assert lone[1].tolist() == padded[1].tolist() == [0]
        assert lone[0].tolist() == padded[0].tolist()
