"""Which token grids an image size allows, and the tokenizer geometry that makes each.

DVT never resizes the image: each exit sees the same pixels and gets its token grid from its own
tokenizer geometry.

* Patch embedding (DeiT and the small CPU backbones): a conv with kernel = stride = p and zero padding
  `pad` on every side, p = ceil(S / g) and pad the smallest value with (S + 2 pad - p) // p + 1 = g,
  i.e. pad = ceil((g p - S) / 2). At S = 224 this is DeiT's 32 / 23-pad-3 / 16 for 7 / 10 / 14. We
  accept a grid only if pad < p / 2, so every border patch still covers more real pixels than zeros
  (e.g. at 28 px: 1-7, 10, 14, 28; at 32 px: 1-8, 11, 16, 32).
* Soft split (the `*_ss` CPU backbones, e.g. vit_micro_ss): T2T's idea without its Token-Performers. Two
  overlapping splits written as convolutions: split 0 cuts the image into a (2g x 2g) map of
  overlapping windows (stride s = ceil(S / 2g), kernel s + 2 floor(s/2), about twice the stride,
  as T2T's 7/4 and 3/2) and embeds each in `token_dim` channels, GELU, then split 1 (3x3, stride 2)
  makes the g x g grid of D channels. The first split's stride is tied to the grid, so a coarse
  grid compresses its pixels early, as T2T-ViT's 7x7 exit does with its 14/8 first split; the
  overlap and the nonlinearity are what make it learn much faster than one linear patch.
* T2T (T2T-ViT backbones): three soft splits (Unfold) with Token-Performers between them. Only the
  first split depends on the grid; the table below is the official one for 224 px. A grid is valid
  if it is in the table and the three splits really produce it at the given image size.

Torch-free (like dvt.backbones): the config check reads it when a workflow loads; the tokenizer
modules that use the geometry are in dvt/models/tokenizer.py.
"""

from __future__ import annotations

import math
from typing import Sequence

from dvt.backbones import CNN_GRID, ConvNetSpec, get_spec
from dvt.errors import DvtError

# grid -> (kernel, stride, padding) of the first soft split; later splits are (3, 2, 1). 7, 10 and 14 are
# the official code's. 4 is ours, for the paper's Table 1 (whose 4x4 T2T-ViT-12 the code does not
# release): a 16x16 first map with kernel ~1.7 x stride like the others, which costs 0.213 GMACs at
# 224 px against the paper's 0.21 GFLOPs (tests/test_flops.py).
T2T_FIRST_SPLIT: dict[int, tuple[int, int, int]] = {4: (24, 14, 5), 7: (14, 8, 3), 10: (11, 6, 5), 14: (7, 4, 2)}
T2T_LATER_SPLIT = (3, 2, 1)


def _unfold_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def t2t_map_sizes(img_size: int, grid: int) -> tuple[int, int, int] | None:
    """Side of the token map after each of the three soft splits, or None if `grid` is not made."""
    if grid not in T2T_FIRST_SPLIT:
        return None
    s0 = _unfold_size(img_size, *T2T_FIRST_SPLIT[grid])
    s1 = _unfold_size(s0, *T2T_LATER_SPLIT)
    s2 = _unfold_size(s1, *T2T_LATER_SPLIT)
    return (s0, s1, s2) if min(s0, s1) >= 1 and s2 == grid else None


def patch_geometry(img_size: int, grid: int) -> tuple[int, int] | None:
    """(patch, padding) of the patch-embedding conv for `grid`, or None if the grid is refused."""
    if not 1 <= grid <= img_size:
        return None
    patch = math.ceil(img_size / grid)
    pad = math.ceil((grid * patch - img_size) / 2)
    if 2 * pad >= patch:
        return None
    assert (img_size + 2 * pad - patch) // patch + 1 == grid
    return patch, pad


def soft_split_geometry(img_size: int, grid: int) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of the first soft split for `grid`, or None if the grid is refused.

    The split makes a 2g x 2g map; like `patch_geometry`, a grid is refused when the padding would
    reach half a window (border windows mostly zeros).
    """
    side = 2 * grid
    if not 1 <= side <= img_size:
        return None
    stride = math.ceil(img_size / side)
    kernel = stride + 2 * (stride // 2)
    pad = max(0, math.ceil(((side - 1) * stride + kernel - img_size) / 2))
    if 2 * pad >= kernel or _unfold_size(img_size, kernel, stride, pad) != side:
        return None
    return kernel, stride, pad


def _geometry(tokenizer: str, img_size: int, grid: int) -> object | None:
    return {"t2t": t2t_map_sizes, "soft_split": soft_split_geometry, "patch": patch_geometry}[tokenizer](img_size, grid)


def valid_grids(tokenizer: str, img_size: int) -> list[int]:
    candidates = sorted(T2T_FIRST_SPLIT) if tokenizer == "t2t" else range(1, img_size + 1)
    return [g for g in candidates if _geometry(tokenizer, img_size, g) is not None]


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> '1-3, 5, 7-8' (keeps error lines short)."""
    out: list[str] = []
    for v in values:
        if out and int(out[-1].split("-")[-1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out) or "none"


def check_grid(*, backbone: str, tokenizer: str, img_size: int, grid: int) -> None:
    if _geometry(tokenizer, img_size, grid) is None:
        raise DvtError(f"grid {grid} cannot be made from {img_size}x{img_size} images by backbone {backbone!r}; "
                       f"valid grids at this size: {_ranges(valid_grids(tokenizer, img_size))}")


def grows(grids: Sequence[int]) -> bool:
    """A cascade's grids: at least one, each larger than the one before (params, models and checks agree)."""
    return len(grids) >= 1 and all(b > a for a, b in zip(grids, grids[1:]))


def check_grids(backbone: str, grids: Sequence[int], img_size: int) -> None:
    """DvtError unless `grids` is non-empty, strictly growing and every grid is makeable."""
    spec = get_spec(backbone)
    grids = list(grids)
    if isinstance(spec, ConvNetSpec):
        if grids != [CNN_GRID]:
            raise DvtError(f"{backbone} is a CNN with one exit on the whole image (grid {CNN_GRID}), not grids {grids}")
        return
    if not grows(grids):
        raise DvtError(f"grids {grids} must be a non-empty list growing strictly from exit to exit")
    for g in grids:
        check_grid(backbone=backbone, tokenizer=spec.tokenizer, img_size=img_size, grid=g)
