"""`dvt predict --run R IMAGE...`: classify image files (or every image under folders) with early exit.

For each image: the predicted class (its name from the dataset's manifest), the exit it left at, the
confidence there (max softmax) and the GMACs it cost (exits 1..k). The thresholds are a budget's
(`--budget p`, a row of budget.csv; default: the middle budget, p = 30 of the paper's 59) or those
meeting `--target-gmacs` on the threshold split (as `dvt budget --target-gmacs` finds them). Images
go through the dataset's evaluation transform (resize, centre crop, the manifest's or ImageNet's
normalisation; grey for 1-channel data). The exits are decided from every exit's logits exactly as
`dvt.thresholds.assign_exits` decides them, which real early exit matches bit for bit
(tests/test_speed.py). A table on stdout, or JSON with --json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dvt import checkpoint, thresholds
from dvt.budgets import budget_rows, read_run_logits
from dvt.config import Config
from dvt.data.folder import EXTENSIONS
from dvt.data.images import is_regular_file, open_image
from dvt.errors import DvtError, damaged


def image_paths(items: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to the images under them (sorted); DvtError if none."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += sorted(Path(root) / f for root, _, files in os.walk(path) for f in files
                            if f.lower().endswith(EXTENSIONS) and is_regular_file(Path(root) / f))
        elif path.exists() and not path.is_dir():
            found.append(path)
        else:
            raise DvtError(f"{item}: no such file or folder")
    if not found:
        raise DvtError(f"no images in {', '.join(items)} (looked for {', '.join(EXTENSIONS)})")
    return found


def _thresholds(config: Config, run: str, *, budget: int | None, target_gmacs: float | None,
                num_exits: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(thresholds (K,), how they were chosen)."""
    if num_exits == 1:
        if budget is not None or target_gmacs is not None:
            flag = f"--budget {budget}" if budget is not None else f"--target-gmacs {target_gmacs:g}"
            raise DvtError(f"{flag}: run {run!r} has one exit, which every image takes; budgets choose "
                           "among the exits of a DVT cascade")
        return np.array([thresholds.EVERYBODY_EXITS]), {"rule": "one exit"}
    if target_gmacs is not None:
        _, fit, _, F = read_run_logits(config, run)
        point = thresholds.thresholds_for_gmacs(fit.confidence, F, target_gmacs)
        return point.thresholds, {"rule": "target_gmacs", "target_gmacs": target_gmacs,
                                  "expected_gmacs": point.gmacs}
    p = budget if budget is not None else (config.eval.num_budgets + 1) // 2
    row = budget_rows(config, run, [p], num_exits, asked_by="--budget").loc[p]
    return (row[[f"threshold_{k}" for k in range(num_exits)]].to_numpy(np.float64),
            {"rule": "budget", "budget": int(p), "expected_gmacs": float(row["gmacs"])})


def run(config: Config, *, run: str, images: Sequence[str], budget: int | None = None,
        target_gmacs: float | None = None, as_json: bool = False) -> list[dict[str, Any]]:
    import torch

    from dvt.data.loading import eval_transform
    from dvt.data.manifest import read_manifest
    from dvt.inference import early_exit_predict
    from dvt.run_models import model_for_run
    from dvt.weights import load_weights

    if budget is not None and target_gmacs is not None:
        raise DvtError("give --budget or --target-gmacs, not both")
    paths = image_paths(images)
    rc = config.run(run)
    ckpt, _ = checkpoint.trained_checkpoint(config, run)
    T, rule = _thresholds(config, run, budget=budget, target_gmacs=target_gmacs, num_exits=rc.num_exits)
    if not config.flops_path(run).is_file():
        raise DvtError(f"{config.flops_path(run)} not found: run `{config.command('flops', run)}` first")
    with damaged(config.flops_path(run), config.command("flops", run)):
        F = np.array([float(e["cumulative_gmacs"]) for e in json.loads(config.flops_path(run).read_text())["exits"]])
        if F.shape != (rc.num_exits,):
            raise ValueError(f"{len(F)} exits, run {run} has {rc.num_exits}")
    _, manifest = read_manifest(config.data)
    classes = manifest["classes"]
    transform, mode = eval_transform(config, manifest)
    model = model_for_run(config, run)
    load_weights(model, ckpt, strict=True)
    model.eval()
    # Real early exit, eval.batch_size images at a time, each read when its batch runs: memory stays
    # bounded whatever the number of images, and an image that leaves at exit k runs no later exit.
    size = config.eval.batch_size
    rows = []
    with torch.inference_mode():
        for start in range(0, len(paths), size):
            chunk = paths[start:start + size]
            pred, exits, conf = early_exit_predict(model, torch.stack([transform(open_image(p, mode)) for p in chunk]), T)
            # "class_index" is the predicted class (logits.parquet's `pred`), "exit" counts from 1 (the
            # parquet's from 0).
            rows += [{"image": str(path), "class": classes[int(c)], "class_index": int(c), "exit": int(k) + 1,
                      "grid": int(rc.exit_grids[k]), "confidence": float(v), "gmacs": float(F[k])}
                     for path, c, k, v in zip(chunk, pred, exits, conf)]
    # The last exit takes every image left: no threshold (the search's stand-in -1e8 would read as a number).
    shown = [None if t == thresholds.EVERYBODY_EXITS else t for t in T.tolist()]
    settings = {"run": run, "seed": config.seed, "thresholds": shown, **rule}
    if as_json:
        print(json.dumps({**settings, "predictions": rows}, indent=2))
    else:
        chosen = (f"budget p = {rule['budget']}" if rule["rule"] == "budget" else
                  f"target {rule['target_gmacs']:g} GMACs" if rule["rule"] == "target_gmacs" else "one exit")
        print(f"dvt predict: {run}/seed{config.seed}, {chosen}: {len(rows)} image{'s' if len(rows) != 1 else ''}, "
              f"{np.mean([r['gmacs'] for r in rows]):.4g} GMACs on average")
        table = pd.DataFrame(rows).drop(columns=["class_index"])
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return rows
