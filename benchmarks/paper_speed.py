"""Table 2 on the paper's own models: real early-exit speed of DVT-T2T-ViT-12, DVT-T2T-ViT-14 and
DVT-DeiT-S at 224 px against the last exit alone, with no training (issue #17, items 1-2).

    python benchmarks/paper_speed.py                                  # this CPU: batch 64, 1 thread
    python benchmarks/paper_speed.py --batch-sizes 1 64 128 --cascades t2t_vit_12
    python benchmarks/paper_speed.py --gpu-check --out benchmarks/results/paper_speed_gpu.json

For each cascade (grids 7 -> 10 -> 14, both reuses, 1000 classes, random weights: time does not
depend on them) and batch size, on one fixed batch of random images:

* static: exits 1..k on every image (what an image leaving at exit k pays) and the standalone model,
  a plain one-exit model of the same backbone on the 14x14 grid (the paper's Table 2 reference);
* dynamic: real early exit (`dvt.inference.early_exit_predict`) at the exit shares of the paper's
  budgets p = 10 / 20 / 30 (q = p x 0.05: shares proportional to q^k). Thresholds are fitted on the
  timed batch's own confidences, so exactly those shares leave at each exit whatever the weights.

Measured speed-up = standalone time / early-exit time; ideal = standalone GMACs / early exit's
expected GMACs; efficiency = measured / ideal (1: early exit costs exactly its multiply-adds). Timing
is model only (no data loading): warm-up passes, then the functions take turns in every repeat
(CUDA synchronised around each call), so load drifting on a shared machine hits them alike; each
ratio is the median over repeats of the per-repeat ratio, with its min and max.

At batch 1 an image runs one path, exit 1 alone up to all three exits; the early-exit time is each
path's median time weighted by the shares (what a stream of single images costs on average). Early
exit pads sub-batches of fewer than 4 rows (bit-exact agreement with the simulated early exit);
--no-pad times them as they are, what a latency-bound deployment would run.

--train (meant for the GPU) adds the training throughput of DVT-T2T-ViT-12 with and without reuse:
images/s of forward + summed loss + backward + AdamW step on random images.

Writes one JSON (--out) with its provenance: device, threads, dtype, torch/timm versions, git commit,
date, the command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dvt.checkpoint import git_commit
from dvt.flops import count_cascade
from dvt.inference import autocast, early_exit_predict
from dvt.logits import max_softmax
from dvt.models import Cascade, create_model, native
from dvt.thresholds import budget_fractions, fit_thresholds
from dvt.timing import (
    device_name,
    exits_up_to,
    keep_freed_memory,
    stage_time_prediction,
    time_turns,
)

CASCADES = {"t2t_vit_12": "DVT-T2T-ViT-12", "t2t_vit_14": "DVT-T2T-ViT-14", "deit_small": "DVT-DeiT-S"}
GRIDS = (7, 10, 14)
IMG_SIZE, CLASSES = 224, 1000
BUDGETS = (10, 20, 30)  # the paper's budgets p; q = p * Q_STEP
Q_STEP = 0.05


def build(backbone: str, grids: tuple[int, ...], *, reuse: bool = True, seed: int = 0) -> Cascade:
    torch.manual_seed(seed)
    return create_model(backbone, grids=grids, img_size=IMG_SIZE, in_chans=3, num_classes=CLASSES,
                        feature_reuse=reuse, relation_reuse=reuse).eval()


@torch.inference_mode()
def exit_confidences(model: Cascade, x: torch.Tensor, amp: bool) -> np.ndarray:
    """Max-softmax confidence of every exit on every image: (B, K)."""
    state, conf = None, []
    with autocast(x.device, amp):
        for k in range(model.num_exits):
            logits, state = model.forward_exit(k, x, state)
            conf.append(max_softmax(logits.float().cpu().numpy())[0])
    return np.stack(conf, axis=1)


def forced(k: int, num_exits: int) -> np.ndarray:
    """Thresholds that send every image out at exit k (0-based)."""
    T = np.full(num_exits, np.inf)
    T[k] = -np.inf
    return T


def ratio_stats(reference: list[float], seconds: list[float], ideal: float) -> dict[str, Any]:
    """Per-repeat measured speed-up reference / seconds, as its median, and efficiency (measured / ideal)
    as median, min and max over the repeats."""
    measured = [r / s for r, s in zip(reference, seconds)]
    eff = [m / ideal for m in measured]
    return {"measured": statistics.median(measured), "ideal": ideal, "efficiency": statistics.median(eff),
            "efficiency_min": min(eff), "efficiency_max": max(eff)}


def time_cascade(backbone: str, *, batch: int, device: torch.device, amp: bool, warmup: int, repeats: int,
                 budgets: tuple[int, ...], pad: bool = True) -> dict[str, Any]:
    model = build(backbone, GRIDS).to(device)
    standalone = build(backbone, GRIDS[-1:]).to(device)
    K = model.num_exits
    F = np.asarray(count_cascade(model.cpu()).cumulative_gmacs)  # (K,) cost of leaving at exit k
    G = count_cascade(standalone.cpu()).total_gmacs
    model.to(device), standalone.to(device)
    x = torch.randn(batch, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(1)).to(device)
    targets = {f"p{p}": budget_fractions(K, num_budgets=max(budgets), q_step=Q_STEP)[p - 1] for p in budgets}

    def standalone_fn() -> None:
        with torch.inference_mode(), autocast(device, amp):
            standalone(x)

    fns: dict[str, Callable[[], object]] = {f"exit{k + 1}": exits_up_to(model, x, k, amp=amp) for k in range(K)}
    fns["standalone"] = standalone_fn
    thresholds: dict[str, np.ndarray] = {}
    if batch == 1:  # one image runs one path; early exit is the shares' mix of the paths
        for k in range(K):
            fns[f"path{k + 1}"] = (lambda T: lambda: early_exit_predict(model, x, T, amp=amp, pad=pad))(forced(k, K))
    else:
        conf = exit_confidences(model, x, amp)
        for name, shares in targets.items():
            thresholds[name] = fit_thresholds(conf, shares[None, :])[0]
            fns[name] = (lambda T: lambda: early_exit_predict(model, x, T, amp=amp, pad=pad))(thresholds[name])
    times = time_turns(fns, warmup=warmup, repeats=repeats, device=device)

    med = {name: statistics.median(t) for name, t in times.items()}
    result: dict[str, Any] = {
        "cascade": CASCADES[backbone], "backbone": backbone, "grids": list(GRIDS), "batch_size": batch,
        "gmacs": {"cumulative": F.tolist(), "standalone": G},
        "static": {**{f"exit{k + 1}": batch / med[f"exit{k + 1}"] for k in range(K)},
                   "standalone": batch / med["standalone"]},
        "dynamic": {},
    }
    for name, target in targets.items():
        if batch == 1:
            shares = target
            seconds = [float(shares @ np.array(ts)) for ts in zip(*(times[f"path{k + 1}"] for k in range(K)))]
        else:
            _, exits, _ = early_exit_predict(model, x, thresholds[name], amp=amp, pad=pad)
            shares = np.bincount(exits, minlength=K) / batch
            seconds = times[name]
        g = float(shares @ F)
        prefix_seconds = [med[f"exit{k + 1}"] for k in range(K)]
        result["dynamic"][name] = {"target_shares": target.tolist(), "exit_shares": shares.tolist(), "gmacs": g,
                                   "img_per_s": batch / statistics.median(seconds),
                                   **ratio_stats(times["standalone"], seconds, G / g),
                                   # the early exit's own overhead, apart from how well GMACs predict time
                                   "vs_stage_times": stage_time_prediction(prefix_seconds, shares,
                                                                           statistics.median(seconds), batch)}
    return result


def train_throughput(*, batch: int, device: torch.device, amp: bool, steps: int, warmup: int) -> dict[str, Any]:
    """Images/s of full training steps of DVT-T2T-ViT-12, with both reuses and with neither."""
    out = {}
    for label, reuse in (("reuse", True), ("no_reuse", False)):
        model = build("t2t_vit_12", GRIDS, reuse=reuse).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(batch, 3, IMG_SIZE, IMG_SIZE, generator=gen).to(device)
        y = torch.randint(0, CLASSES, (batch,), generator=gen).to(device)

        def step() -> None:
            with autocast(device, amp):
                loss = sum(torch.nn.functional.cross_entropy(o.float(), y) for o in model(x))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        seconds = time_turns({"step": step}, warmup=warmup, repeats=steps, device=device)["step"]
        out[label] = {"img_per_s": batch / statistics.median(seconds),
                      "img_per_s_min": batch / max(seconds), "img_per_s_max": batch / min(seconds)}
    out["reuse_cost"] = out["no_reuse"]["img_per_s"] / out["reuse"]["img_per_s"]
    return out


def provenance(device: torch.device, threads: int) -> dict[str, Any]:
    import timm

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device.type, "device_name": device_name(device), "threads": threads,
            "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "native_kernel": device.type == "cpu" and native.available(),
            "git_commit": git_commit(), "git_dirty": _dirty(), "command": " ".join(sys.argv)}


def _dirty() -> bool | None:
    """Whether the checkout has uncommitted changes (None: not a git checkout)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cascades", nargs="+", default=list(CASCADES), choices=list(CASCADES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "amp"])
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-pad", dest="pad", action="store_false",
                        help="run sub-batches of fewer than 4 rows as they are (dvt.inference.early_exit_predict pad=False)")
    parser.add_argument("--train", action="store_true", help="also the training throughput of DVT-T2T-ViT-12")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--gpu-check", action="store_true",
                        help="the prepared GPU run (one CUDA device, a few minutes): every cascade in fp32 and AMP "
                             "at batch 64, 128 and 1024, 10 repeats, and the training throughput")
    args = parser.parse_args(argv)
    if args.gpu_check:
        args.device, args.dtypes, args.batch_sizes, args.repeats, args.warmup = "cuda", ["fp32", "amp"], [64, 128, 1024], 10, 3
        args.train, args.train_batch, args.train_steps = True, 128, 20

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; AMP is the fast path
        torch.backends.cudnn.allow_tf32 = False
    result: dict[str, Any] = {"provenance": provenance(device, args.threads), "settings": vars(args) | {"out": None},
                              "inference": [], "training": {}}
    tic = time.perf_counter()
    for dtype in args.dtypes:
        for backbone in args.cascades:
            for batch in args.batch_sizes:
                row = time_cascade(backbone, batch=batch, device=device, amp=dtype == "amp", warmup=args.warmup,
                                   repeats=args.repeats, budgets=tuple(args.budgets), pad=args.pad)
                row["dtype"] = dtype
                result["inference"].append(row)
                effs = " / ".join(f"{d['efficiency']:.2f} [{d['efficiency_min']:.2f}-{d['efficiency_max']:.2f}]"
                                  for d in row["dynamic"].values())
                print(f"{row['cascade']:15s} {dtype:4s} batch {batch:4d}: standalone {row['static']['standalone']:8.1f} "
                      f"img/s; measured / ideal at p = {', '.join(map(str, args.budgets))}: {effs} "
                      f"({time.perf_counter() - tic:.0f} s)", flush=True)
        if args.train:
            result["training"][dtype] = train_throughput(batch=args.train_batch, device=device, amp=dtype == "amp",
                                                         steps=args.train_steps, warmup=args.warmup)
            t = result["training"][dtype]
            print(f"training DVT-T2T-ViT-12 {dtype}: {t['reuse']['img_per_s']:.1f} img/s with reuse, "
                  f"{t['no_reuse']['img_per_s']:.1f} without", flush=True)
    result["seconds"] = time.perf_counter() - tic
    save(args.out, result)
    return result


def save(path: Path | None, result: dict[str, Any]) -> None:
    """The results as JSON at `path` (nothing if None)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
