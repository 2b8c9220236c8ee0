"""`dvt budget`: one row per budget, thresholds meeting their shares, a small eval.json, refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dvt import thresholds
from dvt.cli import main
from dvt.config import load_config
from dvt.logits import read_logits
from dvt.stages.budget import run as budget
from tests.helpers import copy_pipeline

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(finished_pipeline, tmp_path_factory) -> Path:
    return copy_pipeline(finished_pipeline, tmp_path_factory.mktemp("budget"))


def outputs(params: Path, run: str = "dvt") -> tuple[pd.DataFrame, dict]:
    folder = load_config(params).run_dir(run)
    return pd.read_csv(folder / "budget.csv"), json.loads((folder / "eval.json").read_text())


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_one_row_per_budget_and_thresholds_meet_their_shares(pipeline):
    config = load_config(pipeline)
    budget(config, run="dvt")
    frame, _ = outputs(pipeline)
    K = 3
    assert list(frame.columns) == (["budget", "q", "gmacs", "accuracy"] + [f"exit_fraction_{k}" for k in range(K)]
                                   + [f"threshold_{k}" for k in range(K)])
    assert len(frame) == config.eval.num_budgets == 20
    assert frame["budget"].tolist() == list(range(1, 21))
    assert np.allclose(frame["q"], np.arange(1, 21) * 0.1)
    assert (frame["threshold_2"] == thresholds.EVERYBODY_EXITS).all()
    assert np.allclose(frame[[f"exit_fraction_{k}" for k in range(K)]].sum(axis=1), 1.0)
    # Expected cost rises with q (shares move to later exits), up to one-sample wobbles.
    assert frame["gmacs"].iloc[-1] > frame["gmacs"].iloc[0]

    # On the split they were fitted on, the thresholds send floor(n * pi_k) samples out at exit k,
    # give or take one sample (ties at a threshold leave together).
    cal = read_logits(config.run_dir("dvt") / "logits.parquet")["calibration"]
    n = len(cal.labels)
    T = frame[[f"threshold_{k}" for k in range(K)]].to_numpy()
    exits = thresholds.assign_exits(cal.confidence, T)  # (P, n)
    counts = np.stack([(exits == k).sum(axis=1) for k in range(K)], axis=1)
    target = np.floor(n * thresholds.budget_fractions(K, num_budgets=20, q_step=0.1) + 1e-6)
    assert np.abs(counts[:, :-1] - target[:, :-1]).max() <= 1


def test_eval_json_is_small_nested_and_about_this_run_only(pipeline):
    config = load_config(pipeline)
    metrics = budget(config, run="dvt")
    _, stored = outputs(pipeline)
    assert stored == metrics
    assert len(json.dumps(stored)) < 4000
    assert set(stored) == {"run", "seed", "grids", "threshold_split", "test_images", "gmacs", "top1", "dvt"}
    assert stored["seed"] == 42
    assert set(stored["gmacs"]) == set(stored["top1"]) == {"exit1", "exit2", "exit3"}
    dvt = stored["dvt"]
    frame, _ = outputs(pipeline)
    assert dvt["budgets"] == 20 and dvt["max_accuracy"] == frame["accuracy"].max()
    assert set(dvt["accuracy_at_exit_gmacs"]) == {"exit1", "exit2", "exit3"}
    # At exit 1's cost the only operating point is "everyone leaves at exit 1".
    assert dvt["accuracy_at_exit_gmacs"]["exit1"] == pytest.approx(stored["top1"]["exit1"])


def test_outputs_do_not_depend_on_other_runs(pipeline):
    # DVC's per-run stages declare only the run's own files: what other runs hold must not matter.
    config = load_config(pipeline)
    for name in ("eval.json", "budget.csv"):
        (config.run_dir("single") / name).unlink(missing_ok=True)
    budget(config, run="dvt")
    before = outputs(pipeline)
    budget(config, run="single")
    budget(config, run="dvt")
    after = outputs(pipeline)
    assert after[1] == before[1]
    pd.testing.assert_frame_equal(after[0], before[0])


def test_single_exit_run_has_its_one_point(pipeline):
    budget(load_config(pipeline), run="single")
    frame, stored = outputs(pipeline, "single")
    assert len(frame) == 1 and frame["exit_fraction_0"].tolist() == [1.0]
    assert set(stored) == {"run", "seed", "grids", "threshold_split", "test_images", "gmacs", "top1"}
    assert frame["accuracy"][0] == pytest.approx(stored["top1"]["exit1"])


def test_targets_print_and_store_thresholds(pipeline, capsys):
    config = load_config(pipeline)
    F = read_logits(config.run_dir("dvt") / "logits.parquet").cumulative_gmacs
    middle = float((F[0] + F[-1]) / 2)
    metrics = budget(config, run="dvt", target_gmacs=middle, target_accuracy=0.0)
    out = capsys.readouterr().out
    assert f"target {middle:g} GMACs -> thresholds [" in out
    found = metrics["targets"]["gmacs"]
    assert found["target"] == middle and len(found["thresholds"]) == 3
    assert found["fit"]["gmacs"] <= middle + 1e-12
    # Any accuracy reaches 0%: the cheapest point is everyone at exit 1.
    assert metrics["targets"]["accuracy"]["test"]["gmacs"] == pytest.approx(F[0])


@pytest.mark.parametrize("which", ["below", "above"])
def test_target_gmacs_outside_the_cascade_is_refused(pipeline, capsys, which):
    config = load_config(pipeline)
    F = read_logits(config.run_dir("dvt") / "logits.parquet").cumulative_gmacs
    target = float(F[0] / 2 if which == "below" else F[-1] * 2)
    assert main(["budget", "--params", str(pipeline), "--run", "dvt", "--target-gmacs", repr(target)]) == 2
    assert "is outside what this cascade can spend per image" in one_error_line(capsys)


def test_logits_from_another_config_are_refused(pipeline, capsys):
    assert main(["budget", "--params", str(pipeline), "--run", "dvt", "--set", "model.drop_path=0.2"]) == 2
    line = one_error_line(capsys)
    assert "logits.parquet was written for another config" in line and "model.drop_path" in line
    assert "rerun dvt collect" in line


@pytest.mark.parametrize("command", ["budget", "policies"])
def test_logits_with_another_exit_count_are_refused(pipeline, capsys, monkeypatch, command):
    """The fingerprint already ties the file to the run's grids; a file whose own exit count disagrees
    (edited by hand) is refused by both readers of it, before anything is written."""
    import dvt.budgets

    def two_exits(*args, **kwargs):
        table = read_logits(*args, **kwargs)
        return dataclasses.replace(table, metadata={**table.metadata, "num_exits": 2})

    monkeypatch.setattr(dvt.budgets, "read_logits", two_exits)
    folder = load_config(pipeline).run_dir("dvt")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert main([command, "--params", str(pipeline), "--run", "dvt"]) == 2
    assert "logits.parquet has 2 exits but run dvt has 3; rerun `dvt collect --run dvt --seed 42`" \
        in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_budget_fractions_outside_unit_interval_are_refused(pipeline, capsys):
    folder = load_config(pipeline).run_dir("dvt")
    before = (folder / "budget.csv").read_bytes() if (folder / "budget.csv").exists() else None
    assert main(["budget", "--params", str(pipeline), "--run", "dvt", "--set", "eval.q_step=1e-200"]) == 2
    line = one_error_line(capsys)
    assert "eval.q_step = 1e-200" in line and "exit fractions must lie in (0, 1]" in line
    after = (folder / "budget.csv").read_bytes() if (folder / "budget.csv").exists() else None
    assert after == before


def test_missing_checkpoint_is_refused(pipeline, capsys):
    assert main(["budget", "--params", str(pipeline), "--run", "untrained"]) == 2
    assert "train it first with `dvt train --run untrained --seed 42`" in one_error_line(capsys)


def test_official_rounding_gives_the_authors_thresholds(pipeline):
    """eval.rounding: official (issue #19, item 4): budget.csv's thresholds are those of the authors'
    search, run literally on the stored calibration logits; exact stays the default."""
    import torch

    from tests.helpers import authors_find_threshold

    config = load_config(pipeline, ["eval.rounding=official"])
    budget(config, run="dvt")
    frame, _ = outputs(pipeline)
    cal = read_logits(config.run_dir("dvt") / "logits.parquet", logits=True)["calibration"]
    theirs = torch.from_numpy(cal.logits).permute(1, 0, 2).contiguous()  # (K, n, C)
    K = theirs.shape[0]
    assert len(frame) >= 3
    for _, row in frame.iterrows():
        p = int(row["budget"])
        assert [np.float32(row[f"threshold_{k}"]) for k in range(K)] == \
            [np.float32(t) for t in authors_find_threshold(theirs, p, q_step=config.eval.q_step)], p
    budget(load_config(pipeline), run="dvt")  # back to exact for the other tests
