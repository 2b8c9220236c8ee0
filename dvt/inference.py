"""Batched inference over a dataset: every exit's logits, for evaluation during training and `collect`."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dvt.data.loading import make_loader
from dvt.progress import progress


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked (and supported); the CPU path stays float32."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def iterate_logits(model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device,
                   amp: bool = False, desc: str | None = None) -> Iterator[tuple[Tensor, list[Tensor]]]:
    """Yield (labels (B,), [logits (B, C) float32 per exit]) over `dataset` in order, on the CPU."""
    model.eval()
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in progress(loader, desc=desc, unit="batch", leave=False, disable=desc is None):
        with autocast(device, amp):
            outputs = model(x.to(device, non_blocking=True))
        yield y, [o.float().cpu() for o in outputs]


def top1_per_exit(model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device,
                  amp: bool = False) -> list[float]:
    """Top-1 accuracy (percent) of each exit on `dataset`."""
    correct: list[int] | None = None
    total = 0
    for y, outputs in iterate_logits(model, dataset, batch_size=batch_size, device=device, amp=amp):
        hits = [int((o.argmax(dim=1) == y).sum()) for o in outputs]
        correct = hits if correct is None else [a + b for a, b in zip(correct, hits)]
        total += len(y)
    return [100.0 * c / max(total, 1) for c in (correct or [])]


# CPU math libraries may compute a batch of a few rows with other kernels, in another summation
# order, than a larger batch, so an image's logits could change in the last bits with the size of
# its batch. Checked here (torch 2.14, MKL 2024.2; the dvt, dvt_no_reuse and tokens_7x7 default
# runs on n = 1..69 and on to 256 images against one 256-image batch): with one or two threads only
# a lone image differs (MKL's matrix-vector path for one row); with 4 or 16 threads the relation-reuse
# GEMMs also differ for some sizes, so exact agreement is promised for one or two threads, which
# `dvt speed` and the tests use. Padding a batch to at least MIN_ROWS rows keeps `collect`'s stored
# logits and real early exit on subsets of any size bit-identical (tests/test_speed.py). Larger
# batches run as they are: 65 rows left at an exit cost 65 rows, not the 68 that rounding up to a
# multiple of 4 (needed by the 1x1 convolutions of earlier versions) cost.
MIN_ROWS = 4


def pad_rows(index: Tensor, *, minimum: int = MIN_ROWS) -> Tensor:
    """Batch row indices (B,) followed by copies of the first one up to `minimum` rows: (max(B, minimum),)."""
    n = len(index)
    return torch.cat([index, index[:1].expand(minimum - n)]) if 0 < n < minimum else index
