"""Running a cascade: every exit's logits over a dataset (evaluation during training, `collect`), and
real early exit (`speed`, `predict`)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dvt.data.loading import make_loader
from dvt.errors import DvtError
from dvt.logits import max_softmax
from dvt.progress import progress

if TYPE_CHECKING:
    from dvt.models import Cascade


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


@torch.inference_mode()
def early_exit_predict(model: Cascade, x: Tensor, thresholds: Sequence[float] | np.ndarray, *,
                       amp: bool = False, pad: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real early exit (paper §5): (pred (n,), 0-based exit (n,), confidence there (n,)) for images x
    (n, C, S, S). `dvt speed` times it, `dvt predict` answers with it.

    A sample leaves at the first exit k with confidence >= thresholds[k]; the last exit takes the
    rest. Exit k runs only on the rows still in, with their ReuseState rows. The confidence is
    `dvt.logits.max_softmax` of the float32 logits and is compared in float64, exactly as the stored
    confidences are compared by `dvt.thresholds.assign_exits`, so on the CPU this reproduces the
    simulated early exit bit for bit.

    pad=False runs fewer than MIN_ROWS rows as they are instead of padding them (dvt.inference.pad_rows):
    a lone image then costs one row, not four (DVT-T2T-ViT-12 at batch 1 on this CPU: measured / ideal
    0.79-0.84 instead of 0.21-0.23), but its logits may differ from a batch's in the last bits.
    """
    K = model.num_exits
    T = np.asarray(thresholds, dtype=np.float64)
    if T.shape != (K,) or np.isnan(T).any():
        raise DvtError(f"early exit needs one threshold per exit ({K}), got {np.shape(thresholds)}")
    # Not model.eval() on every call: it walks all ~300 modules, the largest non-tensor cost of a call
    # in cProfile.
    if model.training:
        model.eval()
    n = x.shape[0]
    pred = np.empty(n, dtype=np.int64)
    exit_index = np.empty(n, dtype=np.int64)
    said = np.empty(n, dtype=np.float32)
    if n == 0:
        return pred, exit_index, said
    rows = np.arange(n)  # (m,) original index of each real row in the batch
    padded = pad_rows if pad else (lambda index: index)
    batch = padded(torch.arange(n))  # (m',) m' >= m: see dvt.inference.pad_rows
    state = None
    if len(batch) != n:
        x = x[batch.to(x.device)]
    for k in range(K):
        with autocast(x.device, amp):
            logits, state = model.forward_exit(k, x, state)
        confidence, p = max_softmax(logits[:len(rows)].float().cpu().numpy())  # (m,), (m,)
        leave = np.ones(len(rows), dtype=bool) if k == K - 1 else confidence.astype(np.float64) >= T[k]
        pred[rows[leave]], exit_index[rows[leave]], said[rows[leave]] = p[leave], k, confidence[leave]
        if leave.all():
            break
        stay = np.flatnonzero(~leave)
        rows = rows[stay]
        batch = padded(torch.from_numpy(stay)).to(x.device)
        x, state = x[batch], state.select(batch)
    return pred, exit_index, said
