"""Cluttered Fashion-MNIST: items at random scale and place on a larger canvas, among fragments.

Why this exists: plain Fashion-MNIST puts every item centred and at one scale, so nothing in it
rewards a finer token grid, and the paper's premise (paper Fig. 3 / Fig. 10: a large, centred
object is recognised from a coarse grid, a small object among clutter needs fine tokens) has
nothing to act on. Here each 28x28 item is resized, placed at a random position fully inside a
`canvas` x `canvas` black image, and `clutter` square fragments cut from other items of the same
split are pasted at random places (pixel-wise maximum), as in the cluttered MNIST of spatial
transformer networks. Most items are large (side drawn from `large_scale`), easy at any token grid;
a `small_share` of them are small (`small_scale`), lost among the fragments unless the tokens are
fine. Not all images are worth 7x7 words: that is the premise DVT exploits.

Everything is drawn from one numpy generator seeded by (seed, split), so the same IDX files and
params give the same bytes (the manifest's sha256 checks that); the item's side and top-left corner
are kept per image (`<split>_objects.npy`, columns side / top / left) so that reports can relate
where an image exits to how large its object is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dvt.config import ClutteredConfig

# Streams of the generator, one per source split (so train does not shift when test changes).
_SPLIT_STREAM = {"train": 1, "test": 2}
OBJECT_COLUMNS = ("side", "top", "left")


def objects_file(split: str) -> str:
    """The file beside a split's images that holds its items' boxes, (n, 3) in OBJECT_COLUMNS order."""
    return f"{split}_objects.npy"


def object_sides(folder: Path, split: str) -> np.ndarray | None:
    """(n,) side in px of every item of `split` in a fetched folder; None where the dataset has no boxes."""
    path = folder / objects_file(split)
    return np.load(path, mmap_mode="r")[:, OBJECT_COLUMNS.index("side")] if path.is_file() else None


def _resize(items: np.ndarray, side: int) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, side, side) uint8, area-antialiased bilinear (torch, deterministic on CPU)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(items).float().unsqueeze(1)
    y = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return y.squeeze(1).round_().clamp_(0, 255).to(torch.uint8).numpy()


def compose(items: np.ndarray, cfg: ClutteredConfig, *, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, canvas, canvas) uint8 and objects (n, 3) int16 (side, top, left) from items (n, 28, 28)."""
    n, src = len(items), items.shape[1]
    rng = np.random.default_rng([cfg.seed, stream])
    small = rng.random(n) < cfg.small_share
    sides = np.where(small, rng.integers(cfg.small_scale[0], cfg.small_scale[1] + 1, size=n),
                     rng.integers(cfg.large_scale[0], cfg.large_scale[1] + 1, size=n))
    tops = (rng.random(n) * (cfg.canvas - sides + 1)).astype(np.int64)
    lefts = (rng.random(n) * (cfg.canvas - sides + 1)).astype(np.int64)
    # Clutter: for every image `clutter` fragments of `fragment` px, each cut at a random place
    # from a random other item (at native scale) and pasted at a random place of the canvas.
    f = cfg.fragment
    donors = (np.arange(n)[:, None] + rng.integers(1, max(n, 2), size=(n, cfg.clutter))) % n
    cut = rng.integers(0, src - f + 1, size=(n, cfg.clutter, 2))
    at = rng.integers(0, cfg.canvas - f + 1, size=(n, cfg.clutter, 2))

    canvas = np.zeros((n, cfg.canvas, cfg.canvas), dtype=np.uint8)
    for i in range(n):
        for j in range(cfg.clutter):
            (cy, cx), (ay, ax) = cut[i, j], at[i, j]
            patch = items[donors[i, j], cy:cy + f, cx:cx + f]
            np.maximum(canvas[i, ay:ay + f, ax:ax + f], patch, out=canvas[i, ay:ay + f, ax:ax + f])
    for side in np.unique(sides):
        rows = np.flatnonzero(sides == side)
        resized = _resize(items[rows], int(side))
        for r, img in zip(rows, resized):
            t, l = tops[r], lefts[r]
            np.maximum(canvas[r, t:t + side, l:l + side], img, out=canvas[r, t:t + side, l:l + side])
    objects = np.stack([sides, tops, lefts], axis=1).astype(np.int16)
    return canvas, objects


def derive(splits: dict[str, tuple[np.ndarray, np.ndarray]], cfg: ClutteredConfig
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """Fashion-MNIST splits {name: (images (n, 28, 28, 1), labels)} -> the cluttered ones, and objects."""
    out, objects = {}, {}
    for split, (x, y) in splits.items():
        images, obj = compose(x[..., 0], cfg, stream=_SPLIT_STREAM[split])
        out[split] = (images[..., None], y)
        objects[split] = obj
    return out, objects
