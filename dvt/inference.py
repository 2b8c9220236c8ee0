"""Batched inference over a dataset: every exit's logits, for evaluation during training and `collect`."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dvt.data.loading import make_loader


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
    for x, y in tqdm(loader, desc=desc, unit="batch", leave=False, disable=desc is None):
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


# CPU math libraries compute a batch of a few rows with other kernels, in another summation order,
# than a larger batch, so an image's logits change in the last bits with the size of its batch. Seen
# on our CPUs: MKL's linear layers for row counts M = 1..3 (one thread), 1..11 (two threads) and also
# 17..27 (sixteen threads), i.e. small M not a multiple of 4; oneDNN's 1x1 convolutions (relation
# reuse) for batches below 16 with one thread and of 1 with more. Padding every batch to a multiple
# of 4 rows and at least 16 avoids all of these, so `collect`'s stored logits and real early exit on
# subsets of any size agree exactly (tests/test_speed.py). Cost: at most 15 repeated rows per call.
ROW_MULTIPLE = 4
MIN_ROWS = 16


def pad_rows(index: Tensor, *, multiple: int = ROW_MULTIPLE, minimum: int = MIN_ROWS) -> Tensor:
    """Batch row indices (B,) followed by copies of the first one up to the padded size: (B',)."""
    n = len(index)
    size = max(minimum, -(-n // multiple) * multiple)
    return torch.cat([index, index[:1].expand(size - n)]) if n and size > n else index
