"""A small C kernel for CPU inference, built on first use with the system's C compiler.

Only one: the query side of relationship reuse's resampling (resample.c, used by
`dvt.models.reuse.RelationReuse`). PyTorch has no sparse kernel that runs it fast on these shapes
(see the numbers in reuse.py), and a C file needs no build step at install time: it is compiled
once per machine (a second), into DVT_CACHE_DIR (default ~/.cache/dvt), and loaded with ctypes.
Without a compiler, or with DVT_NATIVE=0, `resample_queries()` returns None and the caller uses
its dense matmul instead: the same numbers up to float rounding, only slower. Whole models, time
without / with the kernel, paired (benchmarks/results/cpu_paths.md): the paper's cascades' early exit
at 224 px x1.05-1.11 on an AMD EPYC (4 pairs, loaded machine) and x1.022-1.027 on an Intel Xeon
(15 pairs, quiet), the default's DVT x1.026.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("resample.c")
# -march=native: the library is built on, and for, the machine that runs it (the cache key holds
# the CPU's flags, so a home directory shared by different machines gets one build per kind).
FLAGS = ["-O3", "-march=native", "-std=c11", "-shared", "-fPIC"]


def _cpu_key() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    flags = ""
    if cpuinfo.is_file():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return platform.machine() + flags


def _cache_dir() -> Path:
    root = os.environ.get("DVT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dvt"
    return Path(root) / "native"


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"resample-{key}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: jobs started together (DVC, Snakemake) never load half a file.
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("DVT_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        warnings.warn("no C compiler found: relationship reuse runs its slower matmul path "
                      "(install gcc, or set DVT_NATIVE=0 to silence this)", stacklevel=3)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(f"could not build {SOURCE.name} ({detail.strip().splitlines()[-1] if detail.strip() else err}); "
                      "relationship reuse runs its slower matmul path", stacklevel=3)
        return None
    fn = lib.dvt_resample_queries
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_long,
                   ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 5
    return lib


def available() -> bool:
    return _library() is not None


def _taps(W: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """(d, s) resampling matrix along one axis -> (i0, i1, w0, w1), output j = w0 x[i0] + w1 x[i1];
    None if a row has more than two non-zero weights."""
    i0, i1 = np.zeros(len(W), np.int32), np.zeros(len(W), np.int32)
    w0, w1 = np.zeros(len(W), np.float32), np.zeros(len(W), np.float32)
    for j, row in enumerate(W):
        nz = np.flatnonzero(row)
        if not 1 <= len(nz) <= 2:
            return None
        i0[j], i1[j] = nz[0], nz[-1]
        w0[j] = row[nz[0]]
        w1[j] = row[nz[1]] if len(nz) == 2 else 0.0
    return i0, i1, w0, w1


@functools.lru_cache(maxsize=None)
def resample_queries(axis: tuple[tuple[float, ...], ...]) -> Callable[[Tensor, Tensor], None] | None:
    """The kernel for one grid pair, given R along one axis as a (d, s) matrix (nested tuples): a
    function (keys_done, out) that writes R along the queries of every map into out. None when the
    native kernel is unavailable or does not apply (a row with more than two weights).

    keys_done (n, C, 1 + s^2, nk): maps already resampled along the keys, channel c = l * H + h;
    out (L, n, H, 1 + d^2, nk), a view whose last three dims are contiguous (e.g. rows [i, i + n)
    of an (L, B, H, ...) buffer). Float32 CPU tensors."""
    W = np.asarray(axis, dtype=np.float64)
    taps = _taps(W)
    lib = _library() if taps is not None else None
    if lib is None:
        return None
    i0, i1, w0, w1 = taps
    d, s = W.shape

    def run(keys_done: Tensor, out: Tensor) -> None:
        n, C, nu, nk = keys_done.shape
        L, n_out, H, nd, nk_out = out.shape
        if (nu, nd, nk_out, n_out, L * H) != (s * s + 1, d * d + 1, nk, n, C) or out.stride()[2:] != (nd * nk, nk, 1) \
                or not keys_done.is_contiguous() or {keys_done.dtype, out.dtype} != {torch.float32} \
                or keys_done.device.type != "cpu" or out.device.type != "cpu":
            raise ValueError(f"resample_queries: shapes {tuple(keys_done.shape)} -> {tuple(out.shape)} do not fit "
                             f"the {s}x{s} -> {d}x{d} kernel or its layout")
        scratch = np.empty(s * d * nk, dtype=np.float32)
        lib.dvt_resample_queries(keys_done.data_ptr(), out.data_ptr(), n, C, H, out.stride(0), out.stride(1),
                                 s, d, nk, i0.ctypes.data, i1.ctypes.data, w0.ctypes.data, w1.ctypes.data,
                                 scratch.ctypes.data)

    return run
