"""The models' CPU-only fast paths, in one place with one switch (as timm's `set_fused_attn`).

Each path stays because it was measured to pay on whole models (paired runs, path off against on,
benchmarks/results/cpu_paths.md). With the switch off, `set_cpu_fast_paths(False)` or the environment
variable DVT_CPU_FAST_PATHS=0, the models run on the CPU exactly the PyTorch ops they run on a GPU (the
same numbers up to float rounding), and the C kernel is never compiled. DVT_NATIVE=0 turns off the C
kernel alone (dvt.models.native).

| path | where | measured gain |
|---|---|---|
| softmax by hand on rows shorter than SOFTMAX_SHORT_ROW | attention.softmax_rows | x1.17 the default's 3x3 model, x1.05 DVT's early exit |
| explicit attention below FUSED_MIN_TOKENS_* tokens | attention.use_fused_kernel | x1.08 the default's 3x3 model and its no-reuse cascade |
| relation reuse RELATION_CHUNK_ELEMENTS at a time, in place | reuse.RelationReuse | x1.056 DVT-T2T-ViT-14 / DeiT-S early exit at 224 px |
| the C kernel of relation reuse's query side | native.resample_queries | x1.02-1.11 the paper's cascades' early exit at 224 px |
"""

from __future__ import annotations

import os

import torch

# PyTorch's CPU softmax vectorises along each row, a vector register at a time (16 floats with AVX-512);
# shorter rows take a path about 3.5x slower than exp + sum over the same tensor (0.96 vs 0.27 ms for the
# (128, 4, 10, 10) logits of a 3x3 exit).
SOFTMAX_SHORT_ROW = 16

# From how many tokens the fused attention kernel beats the explicit one on the CPU (its blocking is tuned
# for long sequences). Measured, 1 thread, 4 heads of 16, ms per call, fused / explicit: no bias, 128
# images, N = 26: 2.91 / 2.15, 50: 4.96 / 5.58; with a bias, N = 37: 3.94 / 3.05, 65: 8.18 / 11.0; a bias
# added into in place, 65 images, N = 50: 1.94 / 1.65, 65: 3.46 / 4.3; forward + backward, 64 images,
# N = 26: 3.73 / 2.48, 50: 8.07 / 7.39 (with a bias that trains, the fused kernel takes its slow path).
FUSED_MIN_TOKENS_INFERENCE = 40
FUSED_MIN_TOKENS_WITH_BIAS = 50
FUSED_MIN_TOKENS_BIAS_IN_PLACE = 64
FUSED_MIN_TOKENS_TRAINING = 64

# Relation reuse in CPU inference runs a few images at a time, so that each chunk's hidden activations
# (rows, 3*L*H, N_u^2) stay within about this many elements (1 MiB of float32), in cache.
RELATION_CHUNK_ELEMENTS = 2**18

_enabled = os.environ.get("DVT_CPU_FAST_PATHS", "1") != "0"


def set_cpu_fast_paths(enable: bool) -> None:
    """Turn the CPU fast paths on (the default) or off, for every model from now on."""
    global _enabled
    _enabled = bool(enable)


def cpu_fast_paths() -> bool:
    return _enabled


def applies(t: torch.Tensor) -> bool:
    """Whether a CPU fast path may act on `t`: it is on the CPU and the switch is on."""
    return _enabled and t.device.type == "cpu"
