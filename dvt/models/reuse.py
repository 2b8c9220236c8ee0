"""Feature and relationship reuse between consecutive exits (spec §2, §3).

Both mechanisms move a tensor defined on the upstream token grid (s_u x s_u patches + cls) to the
downstream grid (s_d x s_d patches + cls) with one spatial operator R:

    R_{s_u -> s_d}: nearest-neighbour upsampling to u x u, then adaptive average pooling to s_d x s_d,

with u the smallest multiple of s_u that is >= s_d. For the paper's pairs this gives exactly the
official recipe (7 -> 14 -> 10 and 10 -> 20 -> 14); for integer ratios (7 -> 14) the pooling is the
identity and is skipped, which is the plain nearest upsampling of the MindSpore port.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn


def upsample_size(src: int, dst: int) -> int:
    """Side u of the intermediate nearest-upsampled map: the smallest multiple of src >= dst."""
    return -(-dst // src) * src


def resample_grid(x: Tensor, size: int) -> Tensor:
    """R on square maps: (..., C, s_u, s_u) as (M, C, s_u, s_u) -> (M, C, size, size)."""
    src = x.shape[-1]
    up = upsample_size(src, size)
    if up != src:
        x = F.interpolate(x, size=(up, up), mode="nearest")
    if up != size:
        x = F.adaptive_avg_pool2d(x, size)
    return x


def resample_tokens(tokens: Tensor, *, src: int, dst: int) -> Tensor:
    """(B, 1 + src^2, C) -> (B, 1 + dst^2, C): patch tokens through R, a zero vector for cls (§2)."""
    B, _, C = tokens.shape
    grid = tokens[:, 1:].transpose(1, 2).reshape(B, C, src, src)
    patches = resample_grid(grid, dst).flatten(2).transpose(1, 2)  # (B, dst^2, C)
    return torch.cat([patches.new_zeros(B, 1, C), patches], dim=1)


def resample_relations(rel: Tensor, *, src: int, dst: int) -> Tensor:
    """(B, C, N_u, N_u) attention maps (query, key) -> (B, C, N_d, N_d), spec §3.

    First along keys: the src^2 patch-key columns form a src x src map per query row (all N_u rows,
    cls included, act as channels); the cls-key column is kept. Then along queries the same way,
    with the cls-query row kept. So the cls row is resampled along keys only, the cls column along
    queries only, and the cls-cls entry is copied.
    """
    B, C, n_u, _ = rel.shape
    n_d = dst * dst + 1
    keys = resample_grid(rel[..., 1:].reshape(B * C, n_u, src, src), dst).reshape(B, C, n_u, dst * dst)
    rel = torch.cat([rel[..., :1], keys], dim=-1)  # (B, C, N_u, N_d)
    # Queries: treat the N_d key positions as channels of a src x src map over patch queries.
    rows = rel[:, :, 1:].transpose(2, 3).reshape(B * C, n_d, src, src)
    rows = resample_grid(rows, dst).reshape(B, C, n_d, dst * dst).transpose(2, 3)  # (B, C, dst^2, N_d)
    return torch.cat([rel[:, :, :1], rows], dim=2)


class FeatureReuse(nn.Sequential):
    """One downstream block's view of the upstream features (spec §2).

    LayerNorm(D) + MLP D -> hidden -> out (GELU) on all upstream tokens, then R to this exit's grid
    with a zero cls vector: (B, N_u, D) -> (B, N_d, out). A Sequential so that the parameter names
    (0 = norm, 1.fc1, 1.fc2) line up with the official `feature_resuse_mlp`.
    """

    def __init__(self, *, dim: int, hidden: int, out: int, src_grid: int, dst_grid: int, norm_eps: float,
                 drop: float = 0.0) -> None:
        super().__init__(nn.LayerNorm(dim, eps=norm_eps), Mlp(dim, hidden, out, drop=drop))
        self.out_dim = out
        self.src_grid = src_grid
        self.dst_grid = dst_grid

    def forward(self, upstream: Tensor) -> Tensor:
        return resample_tokens(super().forward(upstream), src=self.src_grid, dst=self.dst_grid)


class RelationReuse(nn.Sequential):
    """Turns all upstream attention logits into one additive bias per downstream layer (spec §3).

    Input: the upstream logits stacked layer-major, (B, L*H, N_u, N_u) with channel l*H + h. A
    pointwise MLP across those channels (1x1 convs LH -> 3LH -> GELU -> LH, at the upstream
    resolution, where it is cheaper), then R along keys and queries, then split into L tensors
    (B, H, N_d, N_d). Indices 0 and 2 match the official `relation_reuse_conv`.
    """

    def __init__(self, *, depth: int, num_heads: int, src_grid: int, dst_grid: int) -> None:
        channels = depth * num_heads
        super().__init__(nn.Conv2d(channels, 3 * channels, kernel_size=1), nn.GELU(),
                         nn.Conv2d(3 * channels, channels, kernel_size=1))
        self.num_heads = num_heads
        self.src_grid = src_grid
        self.dst_grid = dst_grid

    def forward(self, upstream: Tensor) -> tuple[Tensor, ...]:
        mixed = super().forward(upstream)
        return resample_relations(mixed, src=self.src_grid, dst=self.dst_grid).split(self.num_heads, dim=1)
