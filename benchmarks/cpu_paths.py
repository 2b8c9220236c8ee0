"""What each CPU-specific path of the model code buys, on the paper's cascades and on the default
(issue #17, item 3): real early exit timed with every path on, and with each one off in turn.

    python benchmarks/cpu_paths.py --out benchmarks/results/cpu_paths.json

The paths (all in dvt/models/), and what "off" puts in their place:

* native: the C kernel that resamples relation-reuse logits along queries (native.py) -> the matmul;
* short_row_softmax: the hand-written softmax for rows shorter than 16 (cpu_paths.SOFTMAX_SHORT_ROW) ->
  torch's softmax;
* crossover: the table of token counts from which the CPU takes the fused attention kernel
  (cpu_paths.FUSED_MIN_TOKENS_*) -> the fused kernel wherever the logits are not needed, as on the GPU;
* chunked_reuse: relation reuse a few images at a time (cpu_paths.RELATION_CHUNK_ELEMENTS) -> the whole batch
  at once.

Each cascade (random weights, both reuses) runs real early exit at the exit shares of budget p
(default 20: a third of the images at each exit), thresholds fitted on the timed batch; the variants
are timed in pairs, each with the path off beside one with every path on, in alternating order.
gain = time off / time on, the median over the pairs with min and max; > 1 means the path saves time.
A path that cannot act on a model (the short-row softmax where every row has >= 16 tokens) measures
the method's own noise: its gain should be 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dvt.inference import early_exit_predict
from dvt.models import cpu_paths, create_model, native
from dvt.thresholds import budget_fractions, fit_thresholds
from dvt.timing import keep_freed_memory

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("paper_speed", HERE / "paper_speed.py")
paper_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_speed)

# name -> (backbone, grids, image side, channels, classes, batch, reuse). The default pipeline's other
# models too: its one-exit models are Table 2's references, and its no-reuse cascade hands no logits
# on, so attention there runs on whichever kernel the CPU paths choose.
CASCADES = {
    "DVT-T2T-ViT-12": ("t2t_vit_12", (7, 10, 14), 224, 3, 1000, 64, True),
    "DVT-T2T-ViT-14": ("t2t_vit_14", (7, 10, 14), 224, 3, 1000, 64, True),
    "DVT-DeiT-S": ("deit_small", (7, 10, 14), 224, 3, 1000, 64, True),
    "default (vit_micro_ss, 56 px)": ("vit_micro_ss", (3, 5, 7), 56, 1, 10, 128, True),
    "default, no reuse": ("vit_micro_ss", (3, 5, 7), 56, 1, 10, 128, False),
    "default, 3x3 alone": ("vit_micro_ss", (3,), 56, 1, 10, 128, False),
    "default, 7x7 alone": ("vit_micro_ss", (7,), 56, 1, 10, 128, False),
}


@contextlib.contextmanager
def path_off(name: str) -> Iterator[None]:
    """Within the block, the named CPU path is replaced by the generic code."""
    saved: list[tuple[Any, str, Any]] = []

    def patch(module: Any, attr: str, value: Any) -> None:
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, value)

    if name == "native":
        patch(native, "resample_queries", lambda axis: None)
    elif name == "short_row_softmax":
        patch(cpu_paths, "SOFTMAX_SHORT_ROW", 0)
    elif name == "crossover":
        for attr in ("INFERENCE", "WITH_BIAS", "BIAS_IN_PLACE", "TRAINING"):
            patch(cpu_paths, f"FUSED_MIN_TOKENS_{attr}", 0)
    elif name == "chunked_reuse":
        patch(cpu_paths, "RELATION_CHUNK_ELEMENTS", 2**62)
    elif name == "all":  # the one switch: plain PyTorch ops, as on a GPU
        patch(cpu_paths, "_enabled", False)
    elif name != "none":
        raise ValueError(name)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


PATHS = ("native", "short_row_softmax", "crossover", "chunked_reuse", "all")


def measure(label: str, *, budget: int, warmup: int, repeats: int, batch: int | None = None) -> dict[str, Any]:
    backbone, grids, side, chans, classes, default_batch, reuse = CASCADES[label]
    batch = batch or default_batch
    torch.manual_seed(0)
    model = create_model(backbone, grids=grids, img_size=side, in_chans=chans, num_classes=classes,
                         feature_reuse=reuse, relation_reuse=reuse).eval()
    x = torch.randn(batch, chans, side, side, generator=torch.Generator().manual_seed(1))
    conf = paper_speed.exit_confidences(model, x, amp=False)
    T = fit_thresholds(conf, budget_fractions(len(grids), num_budgets=budget, q_step=paper_speed.Q_STEP)[-1:])[0]
    _, exits, _ = early_exit_predict(model, x, T)

    def variant(name: str) -> Callable[[], object]:
        def fn() -> None:
            with path_off(name):
                early_exit_predict(model, x, T)
        return fn

    on, off = variant("none"), {p: variant(p) for p in PATHS}
    for fn in (on, *off.values()):
        for _ in range(warmup):
            fn()
    # Each off timing is paired with an all-on timing right beside it, in alternating order, so that a
    # drifting load (or whatever runs first in a round) cancels out of the ratio.
    ratios: dict[str, list[float]] = {p: [] for p in PATHS}
    all_on: list[float] = []
    for r in range(repeats):
        for p in PATHS:
            pair = [("on", on), ("off", off[p])] if r % 2 == 0 else [("off", off[p]), ("on", on)]
            seconds = {}
            for kind, fn in pair:
                start = time.perf_counter()
                fn()
                seconds[kind] = time.perf_counter() - start
            ratios[p].append(seconds["off"] / seconds["on"])
            all_on.append(seconds["on"])
    return {"backbone": backbone, "grids": list(grids), "img_size": side, "batch_size": batch, "budget": budget,
            "exit_shares": (np.bincount(exits, minlength=len(grids)) / batch).tolist(),
            "img_per_s_all_on": batch / statistics.median(all_on),
            "gain": {p: {"median": statistics.median(r), "min": min(r), "max": max(r)} for p, r in ratios.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cascades", nargs="+", default=list(CASCADES), choices=list(CASCADES))
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: 64 at 224 px, 128 at 56 px)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    result: dict[str, Any] = {"provenance": paper_speed.provenance(torch.device("cpu"), args.threads),
                              "settings": vars(args) | {"out": None}, "cascades": {}}
    tic = time.perf_counter()
    for label in args.cascades:
        row = measure(label, budget=args.budget, warmup=args.warmup, repeats=args.repeats, batch=args.batch)
        result["cascades"][label] = row
        gains = ", ".join(f"{p} x{g['median']:.3f} [{g['min']:.3f}-{g['max']:.3f}]" for p, g in row["gain"].items())
        print(f"{label}: {row['img_per_s_all_on']:.1f} img/s all on; off/on: {gains} ({time.perf_counter() - tic:.0f} s)",
              flush=True)
    paper_speed.save(args.out, result)
    return result


if __name__ == "__main__":
    main()
