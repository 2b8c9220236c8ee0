"""`dvt speed --run R`: measured throughput, static and with real early exit (paper Table 2, §5).

Everything is timed on one fixed batch of real test images (speed.batch_size drawn with a fixed seed,
so the exit shares are representative) on speed.device with speed.threads CPU threads: speed.warmup
untimed passes, then the median of speed.repeats timed ones (CUDA synchronised around each). The
measurements take turns within each repeat, so a varying load on a shared machine spares the ratios.

What is timed, and the reference each speed-up is measured against:

* static exits: exits 1..k of the cascade on every image, what DVT pays for an image that leaves
  at exit k (cumulative GMACs F_k). Exits 1..K is the whole cascade without early exit.
* static standalone: a plain one-exit model of the same backbone on the last exit's grid (random
  weights; time does not depend on them), i.e. the paper's Table 2 reference, a T2T-ViT of the
  final token count. For a one-exit run it is the run itself.
* dynamic, for each budget p of speed.budgets (rows of budget.csv): real early exit with that
  budget's thresholds (`early_exit_predict`): exit 1 on the batch, confident rows leave, the next
  exit runs only on the rows left, reusing their state. Its expected cost is g = sum_k n_k / n F_k
  with the exit shares n_k / n seen on the timed batch. Against each reference r (the whole cascade,
  cost F_K, and the standalone model) it records the measured speed-up t_r / t_dynamic, the ideal
  one GMACs_r / g, and measured / ideal (1 = early exit costs exactly its multiply-adds). It also
  predicts the early-exit time from the static stage times and the shares of the batch reaching
  each exit; measured against that, it isolates the cost of the mechanism itself.

Batches are padded as `dvt.inference.pad_rows` says (to at least 4 rows), so the timed early exit
is exactly the one tested against the simulation.

Writes runs/R/seed<S>/speed.json: run, grids, device, device_name, torch, threads, batch_size, amp,
allocator, native_kernel, warmup, repeats; static.exits.exitK / static.cascade / static.standalone
{gmacs, img_per_s (, grid)}; dynamic.pP {budget, thresholds, exit_fractions, gmacs, img_per_s,
test {gmacs, accuracy} (budget.csv), vs_cascade / vs_standalone {measured, ideal, efficiency},
vs_stage_times {predicted_img_per_s, efficiency}}.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from dvt import checkpoint, layout
from dvt.atomic import write_json
from dvt.budgets import budget_rows
from dvt.config import Config
from dvt.data.loading import load_split, make_loader
from dvt.errors import DvtError
from dvt.flops import count_cascade
from dvt.inference import early_exit_predict, pick_device
from dvt.logits import check_matches, read_metadata
from dvt.models import Cascade, native
from dvt.run_models import model_for_run, standalone_for_run
from dvt.timing import (
    device_name,
    exits_up_to,
    keep_freed_memory,
    stage_time_prediction,
    time_turns,
)
from dvt.weights import load_weights

# Which test images are timed: a fixed random draw, so every rerun times the same batch.
BATCH_SEED = 0

def _device(name: str) -> torch.device:
    device = pick_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DvtError(f"speed.device = {name!r} but no CUDA device is available here; use auto or cpu")
    return device


def _test_batch(config: Config, size: int) -> Tensor:
    """`size` test images (with repeats if the split is smaller), drawn with a fixed seed: (B, C, S, S)."""
    test = load_split(config, "test")
    if len(test) == 0:
        raise DvtError("the test split is empty: nothing to time")
    pick = np.random.default_rng(BATCH_SEED).choice(len(test), size=size, replace=size > len(test)).tolist()
    x, _ = next(iter(make_loader(test, batch_size=size, shuffle=False, sampler=pick)))
    return x


def _ratios(reference_seconds: float, reference_gmacs: float, seconds: float, gmacs: float) -> dict[str, float]:
    measured, ideal = reference_seconds / seconds, reference_gmacs / gmacs
    return {"measured": measured, "ideal": ideal, "efficiency": measured / ideal}


def run(config: Config, *, run: str) -> dict[str, Any]:
    """Write runs/<run>/seed<S>/speed.json; returns its content."""
    sc = config.speed
    folder = config.run_dir(run)
    ckpt = folder / layout.CHECKPOINT
    if not ckpt.is_file():
        raise DvtError(f"{ckpt} not found: train it first with `{config.command('train', run)}`")
    # The budgets' thresholds and GMACs come from the logits of this very checkpoint and settings.
    logits = folder / layout.LOGITS
    meta = read_metadata(logits)
    check_matches(meta, config_dict=checkpoint.run_fingerprint(config, run),
                  checkpoint_sha256=checkpoint.verified_sha256(ckpt), path=logits)
    F = np.asarray(meta["cumulative_gmacs"], dtype=np.float64)  # (K,)
    model = model_for_run(config, run)
    K = model.num_exits
    rows = budget_rows(config, run, config.speed.budgets, K, asked_by="speed.budgets") if K > 1 else None
    load_weights(model, ckpt, strict=True)
    standalone = None
    if K > 1:
        standalone = standalone_for_run(config, run, model).eval()
        standalone_gmacs = count_cascade(standalone).total_gmacs
    device = _device(sc.device)
    amp = config.train.amp and device.type == "cuda"
    allocator_kept = device.type == "cpu" and keep_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(sc.threads)
    try:
        model.eval().to(device)
        x = _test_batch(config, sc.batch_size).to(device)

        def early_exit(T: np.ndarray) -> Callable[[], object]:
            return lambda: early_exit_predict(model, x, T, amp=amp)

        fns: dict[str, Callable[[], object]] = {f"exit{k + 1}": exits_up_to(model, x, k, amp=amp) for k in range(K)}
        if standalone is not None:
            standalone.to(device)
            fns["standalone"] = torch.inference_mode()(lambda: standalone(x))
        budgets: dict[str, tuple[int, np.ndarray, pd.Series]] = {}
        for p, row in (rows.iterrows() if rows is not None else ()):
            T = row[[f"threshold_{k}" for k in range(K)]].to_numpy(dtype=np.float64)
            budgets[f"p{p}"] = (int(p), T, row)
            fns[f"p{p}"] = early_exit(T)
        seconds = {name: statistics.median(t)
                   for name, t in time_turns(fns, warmup=sc.warmup, repeats=sc.repeats, device=device).items()}

        prefix_seconds = [seconds[f"exit{k + 1}"] for k in range(K)]
        static: dict[str, Any] = {
            "exits": {f"exit{k + 1}": {"gmacs": float(F[k]), "img_per_s": len(x) / prefix_seconds[k]}
                      for k in range(K)},
            "cascade": {"gmacs": float(F[-1]), "img_per_s": len(x) / prefix_seconds[-1]},
        }
        ref_seconds, ref_gmacs = prefix_seconds[-1], float(F[-1])
        if standalone is not None:
            ref_seconds, ref_gmacs = seconds["standalone"], standalone_gmacs
        static["standalone"] = {"grid": model.grids[-1], "gmacs": ref_gmacs, "img_per_s": len(x) / ref_seconds}

        dynamic = {name: _dynamic(model, x, p, T, row, F=F, seconds=seconds[name], amp=amp,
                                  prefix_seconds=prefix_seconds, reference=(ref_seconds, ref_gmacs))
                   for name, (p, T, row) in budgets.items()}
    finally:
        torch.set_num_threads(threads)

    result = {
        "run": run, "seed": config.seed, "grids": list(model.grids), "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__, "threads": sc.threads, "batch_size": len(x), "amp": amp,
        "allocator": "glibc, freed memory kept (mallopt)" if allocator_kept else "default",
        # Whether relation reuse ran its C kernel (dvt.models.native) or the matmul fallback.
        "native_kernel": device.type == "cpu" and any(e.has_relation_reuse for e in model.exits) and native.available(),
        "warmup": sc.warmup, "repeats": sc.repeats, "static": static, "dynamic": dynamic,
    }
    write_json(folder / layout.SPEED, result)
    _say(config, run, model, result, path=folder / layout.SPEED)
    return result


def _dynamic(model: Cascade, x: Tensor, p: int, T: np.ndarray, row: pd.Series, *, F: np.ndarray, seconds: float,
             amp: bool, prefix_seconds: list[float], reference: tuple[float, float]) -> dict[str, Any]:
    """speed.json's dynamic.pP: budget p's real early exit on the batch x, timed at `seconds`, against the
    whole cascade, the standalone reference (seconds, GMACs) and the static stage times."""
    _, exits, _ = early_exit_predict(model, x, T, amp=amp)
    shares = np.bincount(exits, minlength=len(F)) / len(exits)
    g = float(shares @ F)
    return {
        "budget": p, "thresholds": T.tolist(), "exit_fractions": shares.tolist(), "gmacs": g,
        "img_per_s": len(x) / seconds,
        "test": {"gmacs": float(row["gmacs"]), "accuracy": float(row["accuracy"])},
        "vs_cascade": _ratios(prefix_seconds[-1], float(F[-1]), seconds, g),
        "vs_standalone": _ratios(*reference, seconds, g),
        "vs_stage_times": stage_time_prediction(prefix_seconds, shares, seconds, len(x)),
    }


def _say(config: Config, run: str, model: Cascade, result: dict[str, Any], *, path: Path) -> None:
    sc, static = config.speed, result["static"]
    summary = "; ".join(f"p={d['budget']}: {d['img_per_s']:.0f} img/s, x{d['vs_standalone']['measured']:.2f} vs "
                        f"standalone (ideal x{d['vs_standalone']['ideal']:.2f}, "
                        f"{d['vs_standalone']['efficiency']:.2f} of ideal)" for d in result["dynamic"].values())
    threads = f"{sc.threads} thread{'s' if sc.threads > 1 else ''}"
    print(f"dvt speed: {run}/seed{config.seed} on {result['device']} ({threads}, batch {result['batch_size']}): "
          f"cascade {static['cascade']['img_per_s']:.0f} img/s, standalone {_last_exit_name(config, run, model)} "
          f"{static['standalone']['img_per_s']:.0f} img/s" + (f"; {summary}" if summary else "") + f" -> {path}")


def _last_exit_name(config: Config, run: str, model: Cascade) -> str:
    """'7x7' for a ViT exit, the CNN's name for a reference CNN (whose one exit has no token grid)."""
    return config.backbone_of(run) if config.run(run).baseline else f"{model.grids[-1]}x{model.grids[-1]}"
