"""Deterministic generated images: learnable, any size, channel and class count (tests, smoke runs).

Each class gets a smooth random prototype (a 4x4 pattern upsampled to the image size); a sample is its
class prototype, shifted by up to 1/8 of the side and with pixel noise. The same seed always gives the
same bytes, so a fetch of `synthetic` is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dvt.config import SyntheticConfig


def _images(protos: torch.Tensor, labels: np.ndarray, gen: torch.Generator) -> np.ndarray:
    n, size = len(labels), protos.shape[-1]
    x = protos[torch.from_numpy(labels)]  # (n, C, S, S) in [0, 1]
    shift = max(1, size // 8)
    # One random translation per sample, by rolling; cheap and keeps the class evident.
    offsets = torch.randint(-shift, shift + 1, (n, 2), generator=gen)
    for i, (oy, ox) in enumerate(offsets.tolist()):
        x[i] = torch.roll(x[i], shifts=(oy, ox), dims=(-2, -1))
    x = x + 0.15 * torch.randn(x.shape, generator=gen)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()  # (n, S, S, C), the on-disk layout


def generate(cfg: SyntheticConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    coarse = torch.rand((cfg.classes, cfg.channels, 4, 4), generator=gen)
    protos = F.interpolate(coarse, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    out = {}
    for split, n in (("train", cfg.train_size), ("test", cfg.test_size)):
        labels = torch.randint(0, cfg.classes, (n,), generator=gen).numpy().astype(np.int64)
        out[split] = (_images(protos.clone(), labels, gen), labels)
    return out
