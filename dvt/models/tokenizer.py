"""Image -> patch tokens for one exit: a strided conv (PatchEmbed), two conv soft splits
(SoftSplitEmbed) or T2T's module with Token-Performers (T2TModule).

Which grids each can make at an image size, and with which kernel, stride and padding, is plain
arithmetic in dvt/grids.py (its docstring explains the three geometries).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dvt.errors import DvtError
from dvt.grids import (
    T2T_FIRST_SPLIT,
    patch_geometry,
    soft_split_geometry,
    t2t_map_sizes,
)
from dvt.models.performer import TokenPerformer


class PatchEmbed(nn.Module):
    """(B, C, S, S) -> (B, g*g, D) with one strided conv (`proj`, as in timm and DeiT)."""

    def __init__(self, *, img_size: int, grid: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        geometry = patch_geometry(img_size, grid)
        if geometry is None:
            raise DvtError(f"grid {grid} cannot be made from {img_size}x{img_size} images")
        patch, pad = geometry
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch, stride=patch, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SoftSplitEmbed(nn.Module):
    """(B, C, S, S) -> (B, g*g, D): two overlapping soft splits as convolutions (see the module doc).

    split0: (B, C, S, S) -> (B, token_dim, 2g, 2g); GELU; split1 (3x3, stride 2): -> (B, D, g, g).
    """

    def __init__(self, *, img_size: int, grid: int, in_chans: int, embed_dim: int, token_dim: int) -> None:
        super().__init__()
        geometry = soft_split_geometry(img_size, grid)
        if geometry is None:
            raise DvtError(f"grid {grid} cannot be made from {img_size}x{img_size} images by soft splits")
        kernel, stride, pad = geometry
        self.split0 = nn.Conv2d(in_chans, token_dim, kernel_size=kernel, stride=stride, padding=pad)
        self.act = nn.GELU()
        self.split1 = nn.Conv2d(token_dim, embed_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.split1(self.act(self.split0(x))).flatten(2).transpose(1, 2)


class T2TModule(nn.Module):
    """Tokens-to-Token tokenizer with Token-Performers: (B, C, S, S) -> (B, g*g, D).

    soft split 0 -> (B, T0, C k0^2) -> performer -> (B, T0, 64) -> map -> soft split 1 (3x3 s2)
    -> (B, T1, 576) -> performer -> (B, T1, 64) -> map -> soft split 2 -> (B, g*g, 576) -> Linear -> D.
    """

    def __init__(self, *, img_size: int, grid: int, in_chans: int, embed_dim: int, token_dim: int = 64,
                 drop: float = 0.1) -> None:
        super().__init__()
        sizes = t2t_map_sizes(img_size, grid)
        if sizes is None:
            raise DvtError(f"grid {grid} cannot be made from {img_size}x{img_size} images by the T2T tokenizer")
        self.map_sizes = sizes
        kernel, stride, padding = T2T_FIRST_SPLIT[grid]
        self.soft_split0 = nn.Unfold(kernel_size=kernel, stride=stride, padding=padding)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.attention1 = TokenPerformer(dim=in_chans * kernel * kernel, emb=token_dim, drop=drop)
        self.attention2 = TokenPerformer(dim=token_dim * 9, emb=token_dim, drop=drop)
        self.project = nn.Linear(token_dim * 9, embed_dim)

    @staticmethod
    def _to_map(x: Tensor, side: int) -> Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)  # (B, T, C) -> (B, C, s, s)

    def forward(self, x: Tensor) -> Tensor:
        s0, s1, _ = self.map_sizes
        x = self.attention1(self.soft_split0(x).transpose(1, 2))
        x = self.attention2(self.soft_split1(self._to_map(x, s0)).transpose(1, 2))
        return self.project(self.soft_split2(self._to_map(x, s1)).transpose(1, 2))


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """Fixed (1, n, d) table: sin on even, cos on odd channels, wavelengths 10000^(2i/d) (T2T-ViT)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, (2 * (torch.arange(dim) // 2)).double() / dim)[None, :]
    angle = pos / rate
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)
