"""`dvt collect`: the long-format logits file, its metadata, determinism, and refusals.

`build_pipeline` (also used by test_budget.py and test_speed.py) makes a tiny synthetic dataset,
trains a 3-exit cascade and a one-exit baseline for one epoch and collects their logits: seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from dvt import checkpoint
from dvt.cli import main
from dvt.config import load_config
from dvt.data.loading import load_split
from dvt.flops import count_cascade
from dvt.logits import read_logits, read_metadata
from dvt.run_models import model_for_run
from dvt.stages import fetch
from dvt.stages.collect import run as collect
from dvt.stages.train import run as train
from dvt.weights import load_weights
from tests.helpers import copy_pipeline, save_random_checkpoint, write_pipeline_params

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(finished_pipeline, tmp_path_factory) -> Path:
    return copy_pipeline(finished_pipeline, tmp_path_factory.mktemp("collect"))


def test_long_format_readable_with_pandas_and_metadata_records_provenance(pipeline):
    config = load_config(pipeline)
    path = config.run_dir("dvt") / "logits.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["split", "sample", "label", "exit", "grid", "logits", "confidence", "pred"]
    assert len(frame) == (100 + 100) * 3
    assert frame.groupby("split").size().to_dict() == {"calibration": 300, "test": 300}
    assert sorted(frame["grid"].unique()) == [2, 4, 8] and sorted(frame["exit"].unique()) == [0, 1, 2]
    assert frame["logits"].map(len).eq(10).all()
    first = frame.iloc[0]
    assert first["pred"] == int(np.argmax(first["logits"]))

    meta = read_metadata(path)
    assert meta["config"] == json.loads(json.dumps(checkpoint.run_fingerprint(config, "dvt")))
    assert meta["checkpoint_sha256"] == checkpoint.sha256(config.run_dir("dvt") / "checkpoint.pt")
    assert meta["grids"] == [2, 4, 8]
    assert meta["cumulative_gmacs"] == pytest.approx(count_cascade(model_for_run(config, "dvt")).cumulative_gmacs)
    # The same key is visible to plain pyarrow, without our reader.
    assert b"dvt" in pq.read_schema(path).metadata


def test_stored_logits_are_the_models_logits(pipeline):
    config = load_config(pipeline)
    model = model_for_run(config, "dvt")
    load_weights(model, config.run_dir("dvt") / "checkpoint.pt", strict=True)
    model.eval()
    test = load_split(config, "test")
    x, y = test.__getitems__(list(range(len(test))))
    with torch.inference_mode():
        expected = torch.stack(model(x)).numpy()  # (K, n, C), one batch of 100 (collect used 64 + 36)
    stored = read_logits(config.run_dir("dvt") / "logits.parquet", logits=True)["test"]
    assert np.array_equal(stored.labels, y.numpy())
    assert np.array_equal(stored.logits, expected.transpose(1, 0, 2))


def test_collect_is_deterministic_and_independent_of_batch_size_and_threads(pipeline):
    """The same bytes again, also with another eval.batch_size or eval.threads (1 or 2): the reason
    the engines may leave eval.batch_size undeclared and need not re-run collect when it changes."""
    config = load_config(pipeline)
    path = config.run_dir("dvt") / "logits.parquet"
    before = path.read_bytes()
    for batch_size, threads in ((64, 2), (7, 2), (256, 1)):
        collect(replace(config, eval=replace(config.eval, batch_size=batch_size, threads=threads)), run="dvt")
        assert path.read_bytes() == before, (batch_size, threads)


def test_train_augmented_split_is_a_fixed_subset_through_the_training_transform(tmp_path):
    params = write_pipeline_params(tmp_path, eval__threshold_split="train-augmented", seeds=[3])
    config = load_config(params)
    fetch.run(config)
    save_random_checkpoint(config, "dvt")
    collect(config, run="dvt")
    path = config.run_dir("dvt") / "logits.parquet"
    first = read_logits(path, logits=True)
    augmented = first["train-augmented"]
    assert len(augmented.sample) == 320 and set(first.splits) == {"calibration", "test", "train-augmented"}
    collect(config, run="dvt")
    again = read_logits(path, logits=True)["train-augmented"]
    assert np.array_equal(again.logits, augmented.logits)  # seeded augmentation
    # The training transform really ran: the same images without it give other logits.
    model = model_for_run(config, "dvt")
    load_weights(model, config.run_dir("dvt") / "checkpoint.pt", strict=True)
    plain = load_split(config, "train", training=False)
    x, _ = plain.__getitems__(augmented.sample[:16].tolist())
    with torch.inference_mode():
        logits = model.eval()(x)[0].numpy()
    assert not np.array_equal(logits, augmented.logits[:16, 0])


def test_missing_or_foreign_checkpoint_is_one_clear_line(pipeline, capsys):
    assert main(["collect", "--params", str(pipeline), "--run", "untrained"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt not found: train it first with `dvt train --run untrained --seed 42`" in err[0]
    assert main(["collect", "--params", str(pipeline), "--run", "dvt", "--set", "train.lr=0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with other settings (train.lr: 0.003 in the checkpoint, 0.01 now)" in err[0]


def test_official_checkpoint_is_collected_and_budgeted_without_training(tmp_path):
    """Build item 5 on a small scale: weights in the official DVT file layout (7 -> 10 -> 14 exits,
    official key names, a `model_state_dict` in a .pth.tar) go through `dvt train` (imported, not
    trained), `dvt collect` and `dvt budget`; the stored logits are the source model's own."""
    from dvt.models import create_model, to_official_state_dict
    from dvt.stages.budget import run as budget

    torch.manual_seed(5)
    source = create_model("vit_micro", grids=(7, 10, 14), img_size=28, in_chans=1, num_classes=10).eval()
    weights = tmp_path / "DVT_vit_micro.pth.tar"
    torch.save({"model_state_dict": to_official_state_dict(source), "flops": [0.0, 0.0, 0.0]}, weights)
    params = write_pipeline_params(tmp_path, data__synthetic={"train_size": 120, "test_size": 48, "image_size": 28},
                          data__calibration_size=40,
                          runs={"official": {"grids": [7, 10, 14], "checkpoint": str(weights)}},
                          eval__num_budgets=10)
    config = load_config(params)
    fetch.run(config)
    train(config, run="official")
    folder = config.run_dir("official")
    assert "imported_from" in checkpoint.load(folder / "checkpoint.pt")
    collect(config, run="official")
    budget(config, run="official")

    test = load_split(config, "test")
    x, y = test.__getitems__(list(range(len(test))))
    with torch.inference_mode():
        expected = torch.stack(source(x)).numpy().transpose(1, 0, 2)  # (n, K, C)
    stored = read_logits(folder / "logits.parquet", logits=True)["test"]
    np.testing.assert_allclose(stored.logits, expected, rtol=0, atol=1e-5)
    frame = pd.read_csv(folder / "budget.csv")
    assert len(frame) == 10 and frame["accuracy"].between(0, 100).all()
    top1 = [100.0 * float((expected[:, k].argmax(1) == y.numpy()).mean()) for k in range(3)]
    stored_top1 = json.loads((folder / "eval.json").read_text())["top1"]
    assert [stored_top1[f"exit{k + 1}"] for k in range(3)] == pytest.approx(top1)
