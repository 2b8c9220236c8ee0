"""What the test modules share: paths, tiny configs and params files, data and logits written in the
real on-disk formats, the engines' environment and the small pipelines they build on. Fixtures live in
conftest.py; no test module imports another."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from dvt import checkpoint
from dvt.config import Config, from_dict, load_config
from dvt.data import idx
from dvt.data.sources import FASHION_FILES
from dvt.logits import LogitsWriter
from dvt.run_models import model_for_run
from dvt.stages import fetch
from dvt.stages.collect import run as collect
from dvt.stages.train import run as train

REPO = Path(__file__).resolve().parents[1]


def make_config(tmp_path: Path, **sections) -> Config:
    """A Config whose data and runs live under tmp_path; sections override the defaults."""
    data = {"root": str(tmp_path / "data"), **sections.pop("data", {})}
    return from_dict({"data": data, "runs_dir": str(tmp_path / "runs"), **sections})


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


PIPELINE_PARAMS = {
    "data": {"dataset": "synthetic", "calibration_size": 100,
             "synthetic": {"train_size": 420, "test_size": 100, "image_size": 16}},
    "model": {"backbone": "vit_micro", "drop_path": 0.0},
    "runs": {"dvt": {"grids": [2, 4, 8]}, "single": {"grids": [4]}, "untrained": {"grids": [8]}},
    "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "lr": 0.003, "threads": 1},
    "eval": {"batch_size": 64, "num_budgets": 20, "q_step": 0.1},
    "speed": {"batch_size": 32, "warmup": 0, "repeats": 1, "budgets": [5, 10]},
}


def write_pipeline_params(root: Path, **changes) -> Path:
    return write_params_file(root, PIPELINE_PARAMS, **changes)


def build_pipeline(root: Path, *, runs: tuple[str, ...] = ("dvt", "single"), **changes) -> Path:
    """Fetch, train and collect `runs` under root; returns the params file."""
    params = write_pipeline_params(root, **changes)
    config = load_config(params)
    fetch.run(config)
    for name in runs:
        train(config, run=name)
        collect(config, run=name)
    return params


def save_random_checkpoint(config: Config, run: str, *, seed: int = 0) -> Path:
    """An untrained model saved as a finished run: collect, budget and speed accept it."""
    torch.manual_seed(seed)
    model = model_for_run(config, run)
    path = config.run_dir(run) / "checkpoint.pt"
    checkpoint.save(path, {"model": model.state_dict(), "config": checkpoint.run_fingerprint(config, run),
                           "epoch": config.train.epochs, "log": []})
    return path


def write_fashion(folder: Path, rng, n_train=120, n_test=30) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = random_images(rng, n, 28, 1)[..., 0]
        y = rng.integers(0, 10, n).astype(np.uint8)
        images_file, labels_file = FASHION_FILES[split]
        idx.write_idx(folder / images_file, x)
        idx.write_idx(folder / labels_file, y)
        arrays[split] = x
    return arrays


def write_folder(root: Path, *, classes: list[str], test: str = "val", per_class: int = 3) -> None:
    """An image tree of the user's own: PNGs and JPEGs of varied sizes and modes, one folder per class."""
    rng = np.random.default_rng(0)
    for split in ("train", test):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = (int(v) for v in rng.integers(12, 60, size=2))
                mode, ext = [("RGB", "jpg"), ("L", "png"), ("RGBA", "png")][i % 3]
                Image.new(mode, (w, h), c * 7 % 256).save(folder / f"{split}_{i}.{ext}")
            (folder / "notes.txt").write_text("not an image")  # skipped, as ImageFolder skips it


BIN = Path(sys.executable).parent


def engine_env() -> dict[str, str]:
    """The environment the engines' jobs need: this venv's `dvt`, `dvc` and `snakemake` first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


# DVC wants every declared param present in params.yaml, so the tiny config is the shipped file with
# small values in place (and the runs replaced).
TINY_CHANGES = {
    "data": {"dataset": "synthetic", "calibration_size": 40,
             "synthetic": {"train_size": 160, "test_size": 40, "image_size": 8, "channels": 1, "classes": 4}},
    "model": {"backbone": "vit_micro", "drop_path": 0.0},
    # Two training threads, while Snakemake below gets one core: the weights must follow params.yaml,
    # not the engine.
    "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "threads": 2},
    "eval": {"num_budgets": 5, "batch_size": 64},
    "speed": {"batch_size": 16, "warmup": 0, "repeats": 1, "budgets": [2], "threads": 1},
    "report": {"gallery_size": 2},
}


def tiny_params(repo: Path = REPO) -> dict:
    """The tiny config on the params.yaml of `repo` (this repository, or an older revision's tree)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY_CHANGES.items():
        params[section].update(values)
    params["runs"] = {"single": {"grids": [4]}, "dvt": {"grids": [2, 4], "relation_reuse": True},
                      "cnn": {"baseline": "resnet18_w16"}}
    return params


GIT = [str(shutil.which("git")), "-c", "user.name=t", "-c", "user.email=t@t"]


def sh(root: Path, *cmd: str) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), cwd=root, capture_output=True, text=True, env=engine_env())
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def tiny_repo(root: Path) -> Path:
    """A git repo at root holding the workflow files of this one and the tiny params.yaml."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "workflow", root / "workflow")
    shutil.copytree(REPO / "reports" / "templates", root / "reports" / "templates")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    sh(root, *GIT, "init", "-q")
    sh(root, str(BIN / "dvc"), "init", "-q")
    # the project's DVC settings (the offline plots page) and plot template
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    sh(root, *GIT, "add", "-A")
    sh(root, *GIT, "commit", "-qm", "tiny")
    return root


def tree_hashes(root: Path, folders: tuple[str, ...] = ("runs", "reports")) -> dict[str, str]:
    """sha256 of every file under `folders`, less hidden bookkeeping (train locks, Snakemake's
    timestamps in folder outputs)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


# Wall-clock measurements, which no two runs share: train.json / train_log.csv keep the seconds per
# epoch (the checkpoint keeps the same log without them, and is compared), speed.json the timings,
# and the report parts that show them (Table 2, the speed finding, the measured speed-up).
TIMED = re.compile(r"^runs/.*/(train\.json|train_log\.csv|speed\.json)$"
                   r"|^reports/(table2\.md|findings\.(md|json)|comparisons\.json|metrics\.json)$")


def flip_a_weight_bit(path: Path) -> None:
    """One bit of the largest tensor's bytes: torch still loads the file (it checks no CRC), with one
    weight changed."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra)
    data[start + entry.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


# The report tests' pipeline, less its runs: tiny synthetic images, two epochs, 20 budgets.
REPORT_PARAMS = {
    "data": {"dataset": "synthetic", "calibration_size": 100,
             "synthetic": {"train_size": 420, "test_size": 100, "image_size": 16}},
    "model": {"backbone": "vit_micro", "drop_path": 0.0},
    "train": {"epochs": 2, "warmup_epochs": 0, "batch_size": 32, "subset": 32, "lr": 0.003, "threads": 1},
    "eval": {"batch_size": 100, "num_budgets": 20, "q_step": 0.1},
    "speed": {"batch_size": 32, "warmup": 0, "repeats": 1, "budgets": [5, 10]},
    "report": {"gallery_size": 4},
}


def copy_templates(config: Config) -> None:
    shutil.copytree(REPO / "reports" / "templates", Path(config.report.dir) / "templates", dirs_exist_ok=True)


def designed_logits(labels: np.ndarray, accuracy: list[float], num_classes: int, seed: int) -> np.ndarray:
    """(K, n, C) logits: exit k is right on images with difficulty below its accuracy, more confident the
    easier the image; wrong exits are unsure."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    difficulty = rng.permutation(n) / n  # (n,) in [0, 1), exact accuracies
    out = np.zeros((len(accuracy), n, num_classes), dtype=np.float32)
    for k, acc in enumerate(accuracy):
        right = difficulty < acc / 100
        said = np.where(right, labels, (labels + 1 + k) % num_classes)
        margin = np.where(right, 2.0 + 8.0 * (acc / 100 - difficulty), 0.5 + 0.5 * difficulty)
        out[k, np.arange(n), said] = margin + rng.uniform(0, 1e-3, n)
    return out


def write_logits(config: Config, run: str, labels: dict[str, np.ndarray], num_classes: int,
                 accuracy: list[float], *, seed: int = 0) -> None:
    folder = config.run_dir(run)
    gmacs = [e["cumulative_gmacs"] for e in json.loads(config.flops_path(run).read_text())["exits"]]
    with LogitsWriter(folder / "logits.parquet", grids=config.run(run).grids, cumulative_gmacs=gmacs,
                      config=checkpoint.run_fingerprint(config, run),
                      checkpoint_sha256=checkpoint.sha256(folder / "checkpoint.pt")) as out:
        for split, y in labels.items():
            out.add(split, np.arange(len(y)), y, designed_logits(y, accuracy, num_classes, seed))


def authors_find_threshold(logits, p: int, q_step: float = 0.05) -> list[float]:
    """The authors' search (MSDNet's `find_threshold` as DVT's inference.py uses it), line for line in
    torch: float32 shares, floor of the float32 product, confidence = max of torch's softmax.
    logits: a torch tensor (K, n, C), their layout."""
    import torch

    n_stage, n_sample, _ = logits.size()
    _p = torch.FloatTensor(1).fill_(p * q_step)
    probs = torch.exp(torch.log(_p) * torch.arange(1, n_stage + 1, dtype=torch.float32))
    probs /= probs.sum()
    max_preds, _ = torch.softmax(logits, dim=2).max(dim=2, keepdim=False)
    _, sorted_idx = max_preds.sort(dim=1, descending=True)
    filtered = torch.zeros(n_sample)
    T = torch.Tensor(n_stage).fill_(1e8)
    for k in range(n_stage - 1):
        count = 0
        out_n = math.floor(n_sample * probs[k])
        for i in range(n_sample):
            ori_idx = sorted_idx[k][i]
            if filtered[ori_idx] == 0:
                count += 1
                if count == out_n:
                    T[k] = max_preds[k][ori_idx]
                    break
        filtered.add_(max_preds[k].ge(T[k]).type_as(filtered))
    T[n_stage - 1] = -1e8
    return T.tolist()
