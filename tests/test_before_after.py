"""The redesign of issue #32 changed no output: the tiny pipeline run by the code of BEFORE (the commit
the issue was read at) and by this checkout (the session's Snakemake pipeline of conftest's
finished_engines), on this machine, in two folders.

Trained weights are reproducible on one machine, not across CPUs (an Intel and an AMD machine give
other float roundings), so the reference is computed here by the old code rather than stored as hashes.
The files that later issues changed on purpose are compared in content, each with its reason below.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import BIN, REPO, engine_env, tiny_params, tree_hashes

pytestmark = pytest.mark.slow

BEFORE = "a4e49acc035c58e4e2629a734ea71633bd008858"
RUNS = ("single", "dvt", "cnn")
SEED = "seed42"
# What the old code is asked to build: the stages whose outputs the redesign must not change (training,
# logits, budgets, policies, FLOPs, Table 1). Speed and the other report pages carry wall-clock times, and
# their layout changed with issue #33 (a section per cascade).
TARGETS = ["reports/table1.md"] + [f"runs/{run}/{SEED}/{name}" for run in RUNS
                                   for name in ("budget.csv", "policies.json", "logits.parquet")]


def old_tree(root: Path) -> Path:
    """BEFORE's files (code, workflow, params.yaml), from this repository's history."""
    out = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", BEFORE], capture_output=True)
    if out.returncode != 0:
        pytest.fail(f"this test needs commit {BEFORE[:7]} in the history of {REPO} "
                    f"(a full clone, or `git fetch --unshallow`): {out.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        # (extraction filters exist from Python 3.11.4 on; the archive is this repository's own)
        tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return root


def pipeline(code: Path, root: Path) -> Path:
    """The tiny pipeline's TARGETS built by Snakemake with the code and workflow of `code`."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(code / name, root / name)
    shutil.copytree(code / "workflow", root / "workflow")
    shutil.copytree(code / "reports" / "templates", root / "reports" / "templates")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(code), sort_keys=False))
    # `dvt` is the venv's console script; PYTHONPATH puts `code`'s package before the installed one.
    env = {**engine_env(), "PYTHONPATH": str(code)}
    out = subprocess.run([str(BIN / "snakemake"), "--cores", "1", *TARGETS], cwd=root, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return root


def weights_and_log(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {key: state[key] for key in ("model", "optimizer", "scheduler", "rng", "epoch", "log")}


def assert_same(a, b, where: str) -> None:
    """Nested dicts/lists of tensors, arrays (numpy's RNG state) and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_the_redesign_changed_no_output(finished_engines, tmp_path):
    before = pipeline(old_tree(tmp_path / "code_before"), tmp_path / "before")
    after = finished_engines["snakemake"]  # the same params, run to the end (TARGETS and the rest)
    # (reports/templates/ are the code's inputs, copied in; the outputs are the rest)
    old = {path: digest for path, digest in tree_hashes(before, ("data", "runs", "reports")).items()
           if not path.startswith("reports/templates/")}
    # DVCLive's group `train/` is `training/` since issue #33 (a metric `train.lr` sat beside the param).
    renamed = {path.replace("/live/plots/metrics/train/", "/live/plots/metrics/training/"): digest
               for path, digest in old.items()}
    # every file the old code wrote for TARGETS, the new code wrote too
    everything = tree_hashes(after, ("data", "runs", "reports"))
    assert renamed.keys() <= everything.keys(), sorted(renamed.keys() - everything.keys())
    new = {path: everything[path] for path in renamed}

    in_content = {}
    for run in RUNS:
        folder = f"runs/{run}/{SEED}"
        # Issue #31: checkpoints are pickled from a canonical copy (a resumed run writes the bytes of an
        # uninterrupted one), so the bytes differ; weights, optimiser, scheduler, RNG and log must not.
        assert_same(weights_and_log(before / folder / "checkpoint.pt"),
                    weights_and_log(after / folder / "checkpoint.pt"), f"{folder}/checkpoint.pt")
        # The logits file's metadata records the checkpoint's sha256; the table itself must be equal.
        pd.testing.assert_frame_equal(pd.read_parquet(before / folder / "logits.parquet"),
                                      pd.read_parquet(after / folder / "logits.parquet"), check_exact=True)
        # Issue #33: a run's metrics.json is filed under its name (`dvt.top1.exit2` in `dvc exp show`).
        assert json.loads((after / folder / "metrics.json").read_text()) == {
            run: json.loads((before / folder / "metrics.json").read_text())}
        old_live = json.loads((before / folder / "live" / "metrics.json").read_text())
        old_live["training"] = old_live.pop("train")
        assert json.loads((after / folder / "live" / "metrics.json").read_text()) == old_live
        # Wall-clock times differ between any two runs; the rest of the training summary must not.
        untimed = [{k: v for k, v in json.loads((root / folder / "train.json").read_text()).items()
                    if k not in ("seconds_per_epoch", "images_per_second", "checkpoint_sha256")}
                   for root in (before, after)]
        assert untimed[0] == untimed[1]
        logs = [pd.read_csv(root / folder / "train_log.csv").drop(columns=["seconds", "images_per_s"])
                for root in (before, after)]
        pd.testing.assert_frame_equal(*logs, check_exact=True)
        in_content.update({f"{folder}/{name}": run for name in
                           ("checkpoint.pt", "logits.parquet", "metrics.json", "live/metrics.json",
                            "train.json", "train_log.csv")})

    byte_equal = [path for path in new if path not in in_content]
    assert {"reports/table1.md", "runs/dvt/seed42/budget.csv", "runs/dvt/seed42/eval.json",
            "runs/dvt/seed42/policies.csv", "runs/dvt/flops.json"} <= set(byte_equal)
    assert any(path.startswith("data/") for path in byte_equal)
    differ = [path for path in byte_equal if renamed[path] != new[path]]
    assert differ == [], f"other bytes than the code before the redesign: {differ}"
