"""A training run's per-epoch log in DVCLive's layout (runs/<run>/seed<S>/live/), the DVC ecosystem's
standard: `live/metrics.json` holds the last epoch's values, `live/plots/metrics/<group>/<name>.tsv`
one row per epoch (`step` = epoch), per exit:

    training/loss_exit<k>, training/loss (their sum), training/lr, calibration/top1_exit<k>

("training", not "train": `dvc exp show` would otherwise show the metric train.lr beside the param
train.lr and rename the param's column to tell them apart.)

The folder is written whole from the rows the checkpoint keeps, into a temporary folder that then
replaces it: a resumed run rewrites the epochs it inherited instead of appending to a half-written
file, and the TSVs hold no timestamps, so retraining gives the same bytes (wall-clock times stay in
train_log.csv).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dvt.atomic import atomic_dir
from dvt.errors import pipeline_module

FOLDER = "live"


def metric_name(column: str) -> str | None:
    """train_log.csv column -> DVCLive metric name (None: not logged, e.g. the epoch and wall-clock times)."""
    if column.startswith("top1_exit"):
        return f"calibration/{column}"
    if column.startswith("loss") or column == "lr":
        return f"training/{column}"
    return None


def write(folder: Path, rows: list[dict]) -> None:
    """Replace `folder` with DVCLive files for `rows` (dicts with `epoch` and train_log.csv's columns)."""
    Live = pipeline_module("dvclive", needed_for="the training log for `dvc exp show` (live/)").Live

    # DVCLive announces which experiment it logs to at INFO; the stage's own progress lines say enough.
    logging.getLogger("dvclive").setLevel(logging.WARNING)
    with atomic_dir(folder) as tmp:
        # save_dvc_exp / dvcyaml: the pipeline (dvc.yaml, workflow/) declares these files itself;
        # DVCLive must neither edit dvc.yaml nor make experiments of its own.
        with Live(str(tmp), save_dvc_exp=False, dvcyaml=None) as live:
            for row in rows:
                live.step = int(row["epoch"])
                for column, value in row.items():
                    name = metric_name(column)
                    if name is not None and value is not None:
                        live.log_metric(name, float(value))
                live.make_summary()
