"""`dvt predict` (issue #18, item 4): image files in, class, exit, confidence and GMACs out, as a table or
JSON; the same decisions as the budgeted early exit on the stored logits of the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dvt.cli import main
from dvt.config import load_config
from dvt.logits import read_logits
from dvt.thresholds import EVERYBODY_EXITS, assign_exits
from tests.helpers import copy_pipeline

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow

N = 6


@pytest.fixture(scope="module")
def finished(finished_pipeline, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("predict")
    params = copy_pipeline(finished_pipeline, root)
    config = load_config(params)
    # the first test images as PNG files, in a folder with one of them in a sub-folder
    images = np.load(Path(config.data.root) / config.data.dataset / "test_images.npy")[:N]  # (N, H, W, C)
    folder = root / "images"
    (folder / "more").mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0]).save(folder / ("more" if i == N - 1 else ".") / f"img{i}.png")
    return params, folder


def predict_json(capsys, params: Path, *args: str) -> dict:
    capsys.readouterr()
    assert main(["predict", "--params", str(params), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("p", [1, 3, 5])
def test_predictions_are_the_budgets_early_exit(finished, capsys, p):
    params, folder = finished
    config = load_config(params)
    out = predict_json(capsys, params, "--run", "dvt", "--budget", str(p), str(folder))
    assert out["budget"] == p and out["rule"] == "budget"
    rows = out["predictions"]
    assert [Path(r["image"]).name for r in rows] == [f"img{i}.png" for i in range(N)]  # the folder, sorted, recursive
    stored = read_logits(config.run_dir("dvt") / "logits.parquet")["test"]
    order = np.argsort(stored.sample)[:N]  # rows of test images 0..N-1
    assert out["thresholds"][-1] is None  # the last exit takes every image left: no threshold in the JSON
    T = np.array([EVERYBODY_EXITS if t is None else t for t in out["thresholds"]])
    exits = assign_exits(stored.confidence[order], T)
    flops_json = json.loads(config.flops_path("dvt").read_text())
    F = [e["cumulative_gmacs"] for e in flops_json["exits"]]
    classes = json.loads((Path(config.data.root) / config.data.dataset / "MANIFEST.json").read_text())["classes"]
    for i, row in enumerate(rows):
        k = int(exits[i])
        assert row["exit"] == k + 1 and row["grid"] == config.run("dvt").grids[k]
        assert row["class_index"] == int(stored.pred[order[i], k]) and row["class"] == classes[row["class_index"]]
        assert row["confidence"] == pytest.approx(float(stored.confidence[order[i], k]), rel=1e-5)
        assert row["gmacs"] == pytest.approx(F[k])


def test_predict_runs_real_early_exit_in_batches(finished, capsys, monkeypatch):
    """Issue #32, item 1: eval.batch_size images at a time, and exit k runs only on the images still in
    (a batch's last few rows are padded to dvt.inference.MIN_ROWS): an image that leaves at exit 1
    never runs exit 2."""
    from dvt.inference import MIN_ROWS
    from dvt.models import Cascade

    params, folder = finished
    ran: list[tuple[int, int]] = []  # (exit, rows) of every call
    forward_exit = Cascade.forward_exit
    monkeypatch.setattr(Cascade, "forward_exit",
                        lambda self, k, x, state: ran.append((k, len(x))) or forward_exit(self, k, x, state))
    out = predict_json(capsys, params, "--run", "dvt", "--budget", "3", "--set", "eval.batch_size=4", str(folder))
    exits = [r["exit"] - 1 for r in out["predictions"]]
    assert len(set(exits)) > 1  # some leave early, some go on
    wanted = []
    for start in range(0, N, 4):  # batches of 4 and 2
        for k in range(3):
            still_in = sum(e >= k for e in exits[start:start + 4])
            if still_in:
                wanted.append((k, max(still_in, MIN_ROWS)))
    assert ran == wanted


def test_a_target_cost_and_the_table(finished, capsys):
    params, folder = finished
    out = predict_json(capsys, params, "--run", "dvt", "--target-gmacs", "0.002", str(folder / "img0.png"))
    assert out["rule"] == "target_gmacs" and out["expected_gmacs"] <= 0.002 and len(out["predictions"]) == 1
    capsys.readouterr()
    assert main(["predict", "--params", str(params), "--run", "single", str(folder)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"dvt predict: single/seed42, one exit: {N} images")
    assert lines[1].split() == ["image", "class", "exit", "grid", "confidence", "gmacs"]
    assert len(lines) == 2 + N and all(line.split()[2] == "1" for line in lines[2:])


@pytest.mark.parametrize("name, damage, message", [
    ("flops.json", b'{"exits": [{"grid": 2}]}', "flops.json is damaged ('cumulative_gmacs'); rerun `dvt flops --run dvt"),
    ("flops.json", b"\x89PNG\r\n", "flops.json is damaged ("),
    ("budget.csv", b"\xff\xfe\x00garbage", "budget.csv is damaged ("),
    ("budget.csv", b"budget,gmacs\n1,0.1\n", "budget.csv lacks the columns threshold_0, threshold_1, threshold_2; "
                                               "rerun `dvt budget --run dvt"),
])
def test_a_damaged_stage_output_is_one_line(finished, capsys, name, damage, message):
    """Issue #31: a damaged flops.json or budget.csv was a TypeError / UnicodeDecodeError traceback."""
    params, folder = finished
    config = load_config(params)
    path = config.flops_path("dvt") if name == "flops.json" else config.run_dir("dvt") / name
    good = path.read_bytes()
    try:
        path.write_bytes(damage)
        capsys.readouterr()
        assert main(["predict", "--params", str(params), "--run", "dvt", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{path.parent}/{message}" in err[0], err
        assert path.read_bytes() == damage  # nothing written
    finally:
        path.write_bytes(good)


@pytest.mark.parametrize("args, message", [
    (["--run", "dvt", "missing.png"], "missing.png: no such file or folder"),
    (["--run", "dvt", "--budget", "99", "IMAGES"], "--budget asks for budget p = 99, but "),
    (["--run", "dvt", "--budget", "2", "--target-gmacs", "0.1", "IMAGES"], "not both"),
    (["--run", "nope", "IMAGES"], "unknown run 'nope'"),
    (["--run", "dvt", "NOTES"], "unreadable image"),
    # issue #31: accepted and ignored on a one-exit run
    (["--run", "single", "--budget", "1000", "IMAGES"], "--budget 1000: run 'single' has one exit"),
    (["--run", "single", "--target-gmacs", "5", "IMAGES"], "--target-gmacs 5: run 'single' has one exit"),
])
def test_bad_input_is_one_line(finished, capsys, tmp_path, args, message):
    params, folder = finished
    (tmp_path / "notes.png").write_text("not an image")
    args = [str(folder) if a == "IMAGES" else str(tmp_path / "notes.png") if a == "NOTES" else a for a in args]
    capsys.readouterr()
    assert main(["predict", "--params", str(params), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
