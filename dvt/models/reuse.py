"""Feature and relationship reuse between consecutive exits.

Both mechanisms move a tensor defined on the upstream token grid (s_u x s_u patches + cls) to the
downstream grid (s_d x s_d patches + cls) with one spatial operator R:

    R_{s_u -> s_d}: nearest-neighbour upsampling to u x u, then adaptive average pooling to s_d x s_d,

with u the smallest multiple of s_u that is >= s_d. For the paper's pairs this gives exactly the
official recipe (7 -> 14 -> 10 and 10 -> 20 -> 14); for integer ratios (7 -> 14) the pooling is the
identity and is skipped, which is the plain nearest upsampling of the MindSpore port.

`resample_grid`, `resample_tokens` and `resample_relations` are that definition, step by step, as the
official code runs it. R is linear, so the models apply it as one precomputed (N_d, N_u) matrix
instead (`reuse_matrix`, built by pushing the identity through the definition, hence exact up to
float rounding): on these small grids the interpolate + pool + cat kernels cost many times the
matmul. Likewise the relation MLP's 1x1 convolutions run as batched matmuls. Inside
`reference_reuse()` the modules run the official ops again: FLOP counting needs them, because the
paper's fvcore numbers charge R as nearest upsampling (output numel) plus adaptive pooling (input
numel), not as a matmul, and tests use them as the reference.

CPU inference (the early-exit speed of `dvt speed`) takes relation reuse further: a few images at a
time, R along keys as one GEMM, R along queries by a small C kernel (`dvt.models.native`) that uses
R's structure: separable, at most two weights per row along each axis, a tenth of the dense
product's multiply-adds. It writes each layer's bias as its own contiguous block, into which the
attention then adds its logits in place. For 65 images on the default 5x5 -> 7x7 pair (1 thread):
R 4.3 -> 2.3 ms, the early exit at the middle budget about 6 % faster.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from dvt.models import cpu_paths, native

# Set inside `reference_reuse()`: the reuse modules then run the official ops.
_reference = False

@contextmanager
def reference_reuse() -> Iterator[None]:
    """Within this block the reuse modules run the official code's ops: 1x1 convolutions, and R as
    nearest upsampling + adaptive average pooling + cat. Used for fvcore counting (dvt.flops) and as
    the slow reference in tests; the result is the same up to float rounding."""
    global _reference
    previous, _reference = _reference, True
    try:
        yield
    finally:
        _reference = previous


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
    """(B, C, N_u, N_u) attention maps (query, key) -> (B, C, N_d, N_d).

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


@lru_cache(maxsize=None)
def _grid_matrix(src: int, dst: int) -> Tensor:
    """R as a (dst^2, src^2) float64 matrix: column j is R applied to the j-th unit src x src map."""
    with torch.inference_mode(False):
        basis = torch.eye(src * src, dtype=torch.float64).reshape(src * src, 1, src, src)
        return resample_grid(basis, dst).reshape(src * src, dst * dst).T


@lru_cache(maxsize=None)
def axis_matrix(src: int, dst: int) -> tuple[tuple[float, ...], ...]:
    """R along one axis of the grid, (dst, src) as nested tuples (hashable, for the native kernel).
    R on the grid is this along rows and along columns: row i of the grid matrix's (i, 0) output
    cell, summed over the source columns, is row i of this one (each row of it sums to 1)."""
    grid = _grid_matrix(src, dst).reshape(dst, dst, src, src)
    return tuple(tuple(row) for row in grid[:, 0].sum(dim=-1).tolist())


@lru_cache(maxsize=None)
def reuse_matrix(*, src: int, dst: int, keep_cls: bool, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Tensor:
    """R on token sequences as one (N_d, N_u) matrix A: patch block = R, cls entry 1 (keep_cls, for
    relations) or 0 (features get a zero cls vector), nothing mixes cls with patches.

    tokens (B, N_u, C) -> A @ tokens equals `resample_tokens`; relations (B, C, N_u, N_u) ->
    A @ rel @ A^T equals `resample_relations` (cls row along keys only, cls column along queries
    only, cls-cls copied). Cached per argument set; callers must not modify it in place.
    """
    # Built outside inference mode even when first asked for inside it: an inference tensor could
    # not be saved for backward by a later training step.
    with torch.inference_mode(False):
        A = torch.zeros(dst * dst + 1, src * src + 1, dtype=torch.float64)
        A[0, 0] = float(keep_cls)
        A[1:, 1:] = _grid_matrix(src, dst)
        return A.to(dtype=dtype, device=device)


class FeatureReuse(nn.Sequential):
    """One downstream block's view of the upstream features.

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
        mixed = super().forward(upstream)  # (B, N_u, out)
        if _reference:
            return resample_tokens(mixed, src=self.src_grid, dst=self.dst_grid)
        A = reuse_matrix(src=self.src_grid, dst=self.dst_grid, keep_cls=False, dtype=mixed.dtype,
                         device=mixed.device)
        return A @ mixed  # (N_d, N_u) @ (B, N_u, out); A's cls row is zero


def feature_reuse_together(modules: Sequence[FeatureReuse], upstream: Tensor) -> tuple[Tensor, ...]:
    """Every block's `FeatureReuse` of one exit at once, in inference: (B, N_u, D) -> n x (B, N_d, out).

    The same function as calling each module (up to float rounding), in fewer and larger ops: the
    LayerNorm statistics once (each block's affine folded into its fc1: W (g x + b) + c =
    (W g) x + (W b + c)), the n fc1s as one GEMM, one GELU, the fc2s as one batched GEMM, R once.
    On the default 5x5 -> 7x7 exit (65 images, 1 thread) 1.35 -> 0.86 ms for its four blocks.
    """
    n, norm = len(modules), modules[0][0]
    B, n_u, _ = upstream.shape
    x = F.layer_norm(upstream, norm.normalized_shape, eps=norm.eps)  # (B, N_u, D), no affine
    w1 = torch.cat([m[1].fc1.weight * m[0].weight for m in modules])  # (n * hidden, D)
    b1 = torch.cat([m[1].fc1.bias + m[1].fc1.weight @ m[0].bias for m in modules])
    hidden = F.gelu(F.linear(x, w1, b1)).view(B * n_u, n, -1).transpose(0, 1)  # (n, B N_u, hidden)
    w2 = torch.stack([m[1].fc2.weight.T for m in modules])  # (n, hidden, out)
    b2 = torch.stack([m[1].fc2.bias for m in modules])[:, None]  # (n, 1, out)
    mixed = torch.baddbmm(b2, hidden, w2).view(n, B, n_u, -1)  # (n, B, N_u, out)
    A = reuse_matrix(src=modules[0].src_grid, dst=modules[0].dst_grid, keep_cls=False, dtype=mixed.dtype,
                     device=mixed.device)
    return (A @ mixed).unbind(0)


def can_run_together(modules: Sequence[FeatureReuse | None]) -> bool:
    """Whether `feature_reuse_together` computes these modules exactly: no autograd (training keeps
    the per-module graph), not the reference ops, no dropout that would act (train mode with p > 0),
    the same norm eps and grids, exact GELU."""
    if torch.is_grad_enabled() or _reference or not modules or any(m is None for m in modules):
        return False
    first = modules[0]
    return all(m[0].eps == first[0].eps and (m.src_grid, m.dst_grid) == (first.src_grid, first.dst_grid)
               and isinstance(m[1].act, nn.GELU) and m[1].act.approximate == "none"
               and (not m.training or m[1].drop1.p == m[1].drop2.p == 0) for m in modules)


class RelationReuse(nn.Sequential):
    """Turns all upstream attention logits into one additive bias per downstream layer.

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
        """(B, L*H, N_u, N_u) -> L biases (B, H, N_d, N_d). In CPU inference each is contiguous and
        freshly allocated, so the attention may accumulate its logits into it (`overwrite_bias`)."""
        if _reference:
            rel = resample_relations(super().forward(upstream), src=self.src_grid, dst=self.dst_grid)
            return rel.split(self.num_heads, dim=1)
        B, C, n_u, _ = upstream.shape
        A = reuse_matrix(src=self.src_grid, dst=self.dst_grid, keep_cls=True, dtype=upstream.dtype,
                         device=upstream.device)  # (N_d, N_u)
        if not cpu_paths.applies(upstream) or torch.is_grad_enabled():
            # Whole batch (the backward of writes into slices of one output would copy all of its
            # gradient once per chunk); L views, no copies.
            return (A @ (self._mixed(upstream) @ A.T)).split(self.num_heads, dim=1)
        H = self.num_heads
        out = upstream.new_empty(C // H, B, H, len(A), len(A))  # layer-major: each layer's bias contiguous
        queries = native.resample_queries(axis_matrix(self.src_grid, self.dst_grid)) \
            if upstream.dtype == torch.float32 else None
        rows = max(1, cpu_paths.RELATION_CHUNK_ELEMENTS // (3 * C * n_u * n_u))
        for i in range(0, B, rows):
            keys = self._mixed(upstream[i:i + rows]) @ A.T  # (b, C, N_u, N_d): R along keys, one GEMM
            if queries is not None:
                queries(keys, out[:, i:i + rows])  # R along queries, written in place
            else:
                out[:, i:i + rows] = (A @ keys).unflatten(1, (-1, H)).transpose(0, 1)
        return out.unbind(0)

    def _mixed(self, upstream: Tensor) -> Tensor:
        """The MLP across channels: (b, C, N_u, N_u) -> (b, C, N_u, N_u)."""
        b, C, n_u, _ = upstream.shape
        fc1, act, fc2 = self
        # The 1x1 convs as (C', C) @ (C, N_u^2) matmuls per image: the same multiply-adds, but the
        # CPU conv kernels run several times slower on these shapes.
        hidden = torch.baddbmm(fc1.bias[:, None], fc1.weight.flatten(1).expand(b, -1, -1), upstream.flatten(2))
        mixed = torch.baddbmm(fc2.bias[:, None], fc2.weight.flatten(1).expand(b, -1, -1), act(hidden))
        return mixed.view(b, C, n_u, n_u)
