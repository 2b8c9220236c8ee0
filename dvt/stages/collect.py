"""`dvt collect --run R`: every exit's logits on the calibration and test splits -> logits.parquet.

The trained weights (EMA when training kept them) run every exit on every image, so budget fitting
and evaluation are simulated offline from this one file, as the authors did. With
`eval.threshold_split: train-augmented` a third split is added: a fixed subset of at most 50,000
training images (the authors' size) seen through the training transform, as the official eval_mode 2
fits its thresholds on; our subset and its augmentation are seeded, theirs were not.

The file streams through `LogitsWriter` (bounded buffer, atomic rename), so the logits are never held
whole in memory. Its metadata records the run's fingerprint, the checkpoint's sha256 and the per-exit
cumulative GMACs (from runs/R/flops.json when it describes this model, else counted with fvcore).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from dvt import checkpoint, layout
from dvt.config import Config
from dvt.data.loading import load_split, make_loader
from dvt.flops import count_cascade
from dvt.inference import autocast, pad_rows, pick_device
from dvt.logits import LogitsWriter
from dvt.models import Cascade
from dvt.progress import progress
from dvt.run_models import model_for_run
from dvt.weights import load_weights

if TYPE_CHECKING:
    from tqdm import tqdm

# The authors fit thresholds on a random 50,000-image subset of the training set.
TRAIN_AUGMENTED_SIZE = 50_000


@dataclass(frozen=True)
class SplitSource:
    """One split to collect: the dataset and which of its images, in the order they are written."""

    name: str  # split name in the logits file
    dataset: Dataset
    indices: list[int]  # (n,) positions within `dataset`; they become the `sample` column
    seed: int | None  # reseed every generator first (augmented images), None for fixed transforms


def cumulative_gmacs(config: Config, run: str, model: Cascade) -> tuple[list[float], str]:
    """Per-exit cumulative GMACs and where they came from: flops.json if it is this model's, else fvcore."""
    path = config.flops_path(run)
    reuse = model.num_exits > 1
    want = {"backbone": config.backbone_of(run), "image_size": model.img_size, "in_chans": model.in_chans,
            "feature_reuse": reuse and model.exits[-1].has_feature_reuse,
            "relation_reuse": reuse and model.exits[-1].has_relation_reuse, "grids": list(model.grids)}
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            found = {**{k: stored[k] for k in want if k != "grids"}, "grids": [e["grid"] for e in stored["exits"]]}
            if found == want:
                return [float(e["cumulative_gmacs"]) for e in stored["exits"]], str(path)
        except (ValueError, KeyError, TypeError):
            pass  # unreadable or another layout: count afresh below
    return count_cascade(model).cumulative_gmacs, "counted with fvcore"


def _sources(config: Config) -> list[SplitSource]:
    sources = []
    for name in ("calibration", "test"):
        dataset = load_split(config, name)
        sources.append(SplitSource(name=name, dataset=dataset, indices=list(range(len(dataset))), seed=None))
    if config.eval.threshold_split == "train-augmented":
        train = load_split(config, "train", training=True)
        size = min(len(train), TRAIN_AUGMENTED_SIZE)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))[:size]
        sources.append(SplitSource(name="train-augmented", dataset=train, indices=pick.sort().values.tolist(),
                                   seed=config.seed))
    return [s for s in sources if s.indices]


def _seed_everything(seed: int) -> None:
    # The array transforms draw from torch's generator, timm's PIL transforms from python's random.
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@torch.inference_mode()
def _write_split(model: Cascade, source: SplitSource, out: LogitsWriter, *, config: Config, device: torch.device,
                 bar: tqdm) -> np.ndarray:
    """Stream one split into `out`; returns the number of correct predictions per exit, (K,)."""
    if source.seed is not None:
        _seed_everything(source.seed)
    loader = make_loader(source.dataset, batch_size=config.eval.batch_size, shuffle=False, sampler=source.indices,
                         num_workers=config.data.num_workers)
    correct = np.zeros(model.num_exits, dtype=np.int64)
    start = 0
    bar.set_postfix(split=source.name, refresh=False)  # (see dvt.progress: one log line per interval)
    for x, y in loader:
        n = len(y)
        rows = pad_rows(torch.arange(n))  # (B',) B' >= B: see dvt.inference.pad_rows
        with autocast(device, config.train.amp):
            outputs = model((x if len(rows) == n else x[rows]).to(device, non_blocking=True))
        logits = np.stack([o[:n].float().cpu().numpy() for o in outputs])  # (K, B, C)
        labels = np.asarray(y, dtype=np.int64)
        out.add(source.name, np.asarray(source.indices[start:start + n], dtype=np.int64), labels, logits)
        correct += (logits.argmax(axis=2) == labels[None, :]).sum(axis=1)
        start += n
        bar.update(n)
    return correct


def run(config: Config, *, run: str) -> dict:
    """Write runs/<run>/seed<S>/logits.parquet; returns the per-exit test top-1 (percent) and where it went."""
    path, sha = checkpoint.trained_checkpoint(config, run)
    model = model_for_run(config, run)
    load_weights(model, path, strict=True)
    model.eval()
    gmacs, gmacs_source = cumulative_gmacs(config, run, model)
    device = pick_device("auto")
    model.to(device)
    torch.set_num_threads(config.eval.threads)  # fixed, not the engine's: see EvalConfig.threads
    sources = _sources(config)
    out_path = config.run_dir(run) / layout.LOGITS
    top1: dict[str, list[float]] = {}
    with LogitsWriter(out_path, grids=model.grids, cumulative_gmacs=gmacs,
                      config=checkpoint.run_fingerprint(config, run),
                      checkpoint_sha256=sha) as writer, \
            progress(total=sum(len(s.indices) for s in sources), desc=f"collect {run}", unit="img", leave=False) as bar:
        for source in sources:
            correct = _write_split(model, source, writer, config=config, device=device, bar=bar)
            top1[source.name] = (100.0 * correct / len(source.indices)).tolist()
    counts = ", ".join(f"{s.name} {len(s.indices)}" for s in sources)
    test = " / ".join(f"{t:.2f}" for t in top1.get("test", []))
    print(f"dvt collect: {run}: {counts} images x {model.num_exits} exits -> {out_path} "
          f"(test top-1 per exit {test}; GMACs {gmacs_source})")
    return {"path": str(out_path), "top1": top1, "cumulative_gmacs": gmacs}
