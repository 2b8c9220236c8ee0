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

import ctypes
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from dvt import checkpoint
from dvt.atomic import write_json
from dvt.config import Config
from dvt.data.loading import load_split, make_loader
from dvt.errors import DvtError
from dvt.flops import count_cascade
from dvt.inference import autocast, early_exit_predict, pick_device
from dvt.logits import check_matches, read_metadata
from dvt.models import Cascade, model_for_run, native
from dvt.models.registry import standalone_for_run
from dvt.weights import load_weights

# Which test images are timed: a fixed random draw, so every rerun times the same batch.
BATCH_SEED = 0

# glibc malloc options (malloc.h): serve blocks up to 32 MiB (its maximum) from the heap instead of
# fresh mmaps, and never hand the heap's free top back to the system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse, as a caching allocator (jemalloc, tcmalloc, PyTorch's
    CUDA allocator) does. By default a tensor of a few MB is a fresh mmap, or sits at the top of the
    heap and is returned to the system when freed, so the next pass page-faults it in again: measured
    here 0-20 ms of system time per 128-image pass, landing on whichever timed function allocates
    after a trim, which made repeated timings scatter by 40 %. Both the references and the early exit
    are timed under this setting. Returns whether it took effect (False off glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def exits_up_to(model: Cascade, x: Tensor, k: int, *, amp: bool = False) -> Callable[[], None]:
    """A call running exits 1..k+1 (k 0-based) on every row of x: what an image leaving at exit k+1 pays."""
    @torch.inference_mode()
    def fn() -> None:
        state = None
        with autocast(x.device, amp):
            for j in range(k + 1):
                _, state = model.forward_exit(j, x, state)
    return fn


def time_turns(fns: dict[str, Callable[[], object]], *, warmup: int, repeats: int,
               device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call of each fn, one per repeat. The calls take turns within every repeat, so a
    change in the machine's load (other jobs on a shared CPU) hits every fn alike and spares the ratios."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _device(name: str) -> torch.device:
    device = pick_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DvtError(f"speed.device = {name!r} but no CUDA device is available here; use auto or cpu")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _test_batch(config: Config, size: int) -> Tensor:
    """`size` test images (with repeats if the split is smaller), drawn with a fixed seed: (B, C, S, S)."""
    test = load_split(config, "test")
    if len(test) == 0:
        raise DvtError("the test split is empty: nothing to time")
    pick = np.random.default_rng(BATCH_SEED).choice(len(test), size=size, replace=size > len(test)).tolist()
    x, _ = next(iter(make_loader(test, batch_size=size, shuffle=False, sampler=pick)))
    return x


def _budget_thresholds(config: Config, run: str, num_exits: int) -> pd.DataFrame:
    """Rows of budget.csv named by speed.budgets, indexed by budget p."""
    path = config.run_dir(run) / "budget.csv"
    if not path.is_file():
        raise DvtError(f"{path} not found: run `{config.command('budget', run)}` first")
    frame = pd.read_csv(path).set_index("budget")
    missing = [p for p in config.speed.budgets if p not in frame.index]
    if missing:
        raise DvtError(f"speed.budgets has p = {missing[0]} but {path} holds budgets {frame.index.min()}.."
                       f"{frame.index.max()} (eval.num_budgets); choose from those")
    columns = [f"threshold_{k}" for k in range(num_exits)]
    if any(c not in frame.columns for c in columns):
        raise DvtError(f"{path} lacks the columns {', '.join(columns)}; rerun `{config.command('budget', run)}`")
    return frame.loc[list(config.speed.budgets)]


def _ratios(reference_seconds: float, reference_gmacs: float, seconds: float, gmacs: float) -> dict[str, float]:
    measured, ideal = reference_seconds / seconds, reference_gmacs / gmacs
    return {"measured": measured, "ideal": ideal, "efficiency": measured / ideal}


def stage_time_prediction(prefix_seconds: list[float], shares: np.ndarray, seconds: float,
                           batch: int) -> dict[str, float]:
    """Early exit's time predicted from the static stage times: sum_k reach_k * (t_1..k - t_1..k-1).

    reach_k is the share of the batch that runs exit k. Measured against this, efficiency says how
    much the mechanism itself (smaller batches, row selection, confidence checks) costs, apart from
    how well GMACs predict each stage's time.
    """
    stage = np.diff(np.concatenate([[0.0], prefix_seconds]))  # (K,) seconds of exit k on the whole batch
    reach = 1.0 - np.concatenate([[0.0], np.cumsum(shares)[:-1]])  # (K,)
    predicted = float(reach @ stage)
    return {"predicted_img_per_s": batch / predicted, "efficiency": predicted / seconds}


def run(config: Config, *, run: str) -> dict[str, Any]:
    """Write runs/<run>/seed<S>/speed.json; returns its content."""
    sc = config.speed
    folder = config.run_dir(run)
    ckpt = folder / "checkpoint.pt"
    if not ckpt.is_file():
        raise DvtError(f"{ckpt} not found: train it first with `{config.command('train', run)}`")
    # The budgets' thresholds and GMACs come from the logits of this very checkpoint and settings.
    logits = folder / "logits.parquet"
    meta = read_metadata(logits)
    check_matches(meta, config_dict=checkpoint.run_fingerprint(config, run),
                  checkpoint_sha256=checkpoint.verified_sha256(ckpt), path=logits)
    F = np.asarray(meta["cumulative_gmacs"], dtype=np.float64)  # (K,)
    model = model_for_run(config, run)
    K = model.num_exits
    rows = _budget_thresholds(config, run, K) if K > 1 else None
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

        dynamic: dict[str, Any] = {}
        for name, (p, T, row) in budgets.items():
            _, exits, _ = early_exit_predict(model, x, T, amp=amp)
            shares = np.bincount(exits, minlength=K) / len(exits)
            g, t = float(shares @ F), seconds[name]
            dynamic[name] = {
                "budget": p, "thresholds": T.tolist(), "exit_fractions": shares.tolist(), "gmacs": g,
                "img_per_s": len(x) / t,
                "test": {"gmacs": float(row["gmacs"]), "accuracy": float(row["accuracy"])},
                "vs_cascade": _ratios(prefix_seconds[-1], float(F[-1]), t, g),
                "vs_standalone": _ratios(ref_seconds, ref_gmacs, t, g),
                "vs_stage_times": stage_time_prediction(prefix_seconds, shares, t, len(x)),
            }
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
    write_json(folder / "speed.json", result)
    summary = "; ".join(f"p={d['budget']}: {d['img_per_s']:.0f} img/s, x{d['vs_standalone']['measured']:.2f} vs "
                        f"standalone (ideal x{d['vs_standalone']['ideal']:.2f}, "
                        f"{d['vs_standalone']['efficiency']:.2f} of ideal)" for d in dynamic.values())
    threads = f"{sc.threads} thread{'s' if sc.threads > 1 else ''}"
    print(f"dvt speed: {run}/seed{config.seed} on {device.type} ({threads}, batch {len(x)}): "
          f"cascade {static['cascade']['img_per_s']:.0f} img/s, standalone {_last_exit_name(config, run, model)} "
          f"{static['standalone']['img_per_s']:.0f} img/s" + (f"; {summary}" if summary else "")
          + f" -> {folder / 'speed.json'}")
    return result


def _last_exit_name(config: Config, run: str, model: Cascade) -> str:
    """'7x7' for a ViT exit, the CNN's name for a reference CNN (whose one exit has no token grid)."""
    return config.backbone_of(run) if config.run(run).baseline else f"{model.grids[-1]}x{model.grids[-1]}"
