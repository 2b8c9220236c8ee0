"""`dvt trend` (issue #30, item 2): one table and figure over finished pipelines that differ in training budget.

Three tiny pipelines train for 1, 2 and 4 epochs of a 32-image subset, and their logits are designed so
that DVT's last exit leads the finest one-exit model by 1, 2 and 3 points: the trend must find exactly
those margins, 32 / 64 / 128 images per model, a slope of +1 point per doubling, and every other number
as each pipeline's own findings.json gives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dvt.cli import main
from dvt.config import load_config
from dvt.errors import DvtError
from dvt.reporting import trend
from dvt.reporting.trend import QUANTITIES, Point, never_reached, table
from dvt.stages import fetch
from dvt.stages.budget import run as budget
from dvt.stages.flops import run as flops
from dvt.stages.policies import run as exit_policies
from dvt.stages.report import run as report
from dvt.stages.speed import run as speed
from dvt.stages.train import run as train
from tests.helpers import REPORT_PARAMS, copy_templates, write_logits, write_params_file

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow

RUNS = {"tokens_2x2": {"grids": [2]}, "tokens_8x8": {"grids": [8]}, "dvt": {"grids": [2, 4, 8]},
        "dvt_no_reuse": {"grids": [2, 4, 8], "feature_reuse": False, "relation_reuse": False}}
EPOCHS = (1, 2, 4)
SUBSET = 32  # images per epoch


def accuracy(margin: int) -> dict[str, list[float]]:
    """Designed top-1 (%) per exit: DVT's last exit `margin` points above the 8x8 model."""
    return {"tokens_2x2": [55], "tokens_8x8": [80], "dvt": [58, 74, 80 + margin], "dvt_no_reuse": [55, 70, 79]}


def build(root: Path, *, epochs: int, margin: int, data: Path) -> Path:
    """A finished pipeline in root (params.yaml, runs/, reports/), everything relative to root as in a study."""
    root.mkdir()
    params = write_params_file(root, REPORT_PARAMS, runs=RUNS, train__epochs=epochs, train__subset=SUBSET,
                               data__root=str(data), runs_dir="runs", report__dir="reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # runs/ and reports/ are relative to the pipeline's folder
        config = load_config(params)
        fetch.run(config)
        labels = {s: np.load(data / "synthetic" / f"{s}_labels.npy") for s in ("calibration", "test")}
        for i, (name, acc) in enumerate(accuracy(margin).items()):
            train(config, run=name)
            flops(config, run=name)
            write_logits(config, name, labels, 10, acc, seed=i)
            budget(config, run=name)
            if name in ("dvt", "tokens_8x8"):
                speed(config, run=name)
            if config.run(name).num_exits > 1:  # the policies page has every cascade
                exit_policies(config, run=name)
        copy_templates(config)
        report(config)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("trend")
    return [build(base / f"budget-{e}x", epochs=e, margin=m, data=base / "data")
            for e, m in zip(EPOCHS, (1, 2, 3))]


def findings(folder: Path) -> dict[str, dict]:
    return {f["name"]: f for f in json.loads((folder / "reports" / "findings.json").read_text())["findings"]}


def test_trend_reads_each_pipeline_and_the_slope_per_doubling(study, tmp_path, capsys):
    out = tmp_path / "trend"
    # given out of order: the table goes by images seen
    assert main(["trend", *map(str, reversed(study)), "--out", str(out), "--templates",
                 str(study[0] / "reports" / "templates")]) == 0
    data = json.loads((out / "trend.json").read_text())
    # the line drawn beside our cost share: the released DVT-T2T-ViT-12 against T2T-ViT-12 (paper: 0.57-0.63)
    assert 0.57 <= data["paper_cost_share"] <= 0.63
    points = data["points"]
    assert [p["folder"] for p in points] == [f.name for f in study]
    assert [p["images_per_model"] for p in points] == [e * SUBSET for e in EPOCHS]
    assert [p["quantities"]["margin"] for p in points] == [1.0, 2.0, 3.0]
    assert [list(p["margin_per_seed"].values()) for p in points] == [[1.0], [2.0], [3.0]]
    assert data["per_doubling"]["margin"] == pytest.approx(1.0)
    for p, folder in zip(points, study):
        f = findings(folder)
        assert p["quantities"]["cost_share"] == f["dvt_is_cheaper_at_equal_accuracy"]["numbers"]["cost_share"]
        gain = f["reuse_makes_later_exits_better"]["numbers"]
        assert p["quantities"]["reuse_gain_last_exit"] == gain["gain"] == 80 + p["quantities"]["margin"] - 79
        assert p["quantities"]["measured_speedup"] == json.loads(
            (folder / "reports" / "metrics.json").read_text())["dvt"]["measured_speedup"]
        assert p["findings"] == {name: x["holds"] for name, x in f.items()}
        seconds = sum(float(line.split(",")[-2]) for run in RUNS
                      for line in (folder / "runs" / run / "seed42" / "train_log.csv").read_text().splitlines()[1:]
                      if not line.startswith("0,"))
        assert p["train_seconds"] == pytest.approx(seconds, abs=0.1)
    page = (out / "trend.md").read_text()
    assert "| images seen per model | 32 | 64 | 128 | |" in page
    assert "| DVT's last exit minus the finest one-exit model (points) | 1 | 2 | 3 | +1 |" in page
    assert {p.name for p in out.iterdir()} == {"trend.json", "trend.md", "trend.png", "trend.svg"}
    assert "3 pipelines" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["one folder", "no report", "not a folder"])
def test_a_bad_study_is_one_line_and_leaves_the_old_trend(study, tmp_path, capsys, case):
    out = tmp_path / "trend"
    out.mkdir()
    (out / "trend.md").write_text("the old page\n")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "params.yaml").write_text((study[0] / "params.yaml").read_text())
    folders = {"one folder": [study[0]], "no report": [study[0], unfinished],
               "not a folder": [study[0], tmp_path / "nowhere"]}[case]
    capsys.readouterr()
    assert main(["trend", *map(str, folders), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dvt trend: error: ") and err.count("\n") == 1, err
    assert {p.name: p.read_text() for p in out.iterdir()} == {"trend.md": "the old page\n"}


def test_a_runs_top1_is_read_from_either_metrics_layout(tmp_path):
    """metrics.json holds a run's numbers under its name; a study begun before that holds them at the top."""
    from dvt.reporting.trend import last_top1

    (tmp_path / "new.json").write_text(json.dumps({"dvt": {"top1": {"exit1": 60.0, "exit2": 70.5}}}))
    (tmp_path / "old.json").write_text(json.dumps({"top1": {"exit1": 60.0, "exit2": 70.5}}))
    assert last_top1(tmp_path / "new.json", "dvt") == last_top1(tmp_path / "old.json", "dvt") == 70.5
    (tmp_path / "none.json").write_text(json.dumps({"dvt": {"gmacs": 1.0}}))
    with pytest.raises(DvtError, match="holds no top1 per exit"):
        last_top1(tmp_path / "none.json", "dvt")


def share_point(images: int, share: float | None, holds: bool | None) -> Point:
    """A budget whose only number is the Table 3 cost share (None: missing) with its finding's verdict."""
    return Point(folder=f"b{images}", epochs=1, images_per_model=images, seeds=(42,), train_seconds=1.0,
                 findings={"dvt_is_cheaper_at_equal_accuracy": holds},
                 quantities={key: None for key in QUANTITIES} | {"cost_share": share},
                 margin_per_seed={42: 0.0}, top1_per_seed={})


def test_a_cost_share_dvt_never_reaches_is_marked_apart_from_one_it_cannot_tell():
    # reached (0.9), never reached (the finding fails), cannot tell (no such run: the finding cannot tell)
    points = [share_point(32, 0.9, False), share_point(64, None, False), share_point(128, None, None)]
    assert never_reached(points, "cost_share") == [64]
    assert never_reached(points, "margin") == []
    rows = [p["never_reached"] for p in table(points)["points"]]
    assert rows == [[], ["cost_share"], []]


def test_the_figure_breaks_a_line_where_a_budget_has_no_number(tmp_path, monkeypatch):
    """A missing budget is a gap in its series' line (never a segment from its neighbours), and one that DVT
    never reaches also gets an x; a series with no number at all draws nothing."""
    drawn = {}

    def keep(fig, folder, stem):  # instead of writing the files
        drawn["fig"] = fig
        return []

    monkeypatch.setattr("dvt.reporting.figures.save", keep)
    points = [share_point(32, 0.9, False), share_point(64, None, False), share_point(128, 0.8, False)]
    trend.figure(tmp_path, points, paper_cost_share=0.6)
    panel = next(ax for ax in drawn["fig"].axes if ax.get_title().startswith("cost to reach"))
    lines = {line.get_label(): line for line in panel.get_lines()}
    assert "vs the depth family" not in lines  # family_cost_share is None everywhere
    share = lines["vs the finest grid"]
    assert list(share.get_xdata()) == [32, 64, 128]
    ys = share.get_ydata()
    assert ys[0] == 0.9 and np.isnan(ys[1]) and ys[2] == 0.8
    crosses = [c for c in panel.collections if c.get_label() == "never reached"]
    assert len(crosses) == 1 and crosses[0].get_offsets()[:, 0].tolist() == [64]
