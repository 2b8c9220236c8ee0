"""Timing on the CPU or a GPU, shared by `dvt speed` and benchmarks/: interleaved medians over several
callables, the exits of a cascade as a callable, the device's name, the glibc allocator setting that
makes CPU timings steady, and the early-exit time predicted from static stage times.
"""

from __future__ import annotations

import ctypes
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dvt.inference import autocast
from dvt.models import Cascade

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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


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
