"""Easy and hard test images (after paper Fig. 10): real images from the dataset, chosen by DVT's logits.

Easy: the test images the first exit is most confident about, i.e. the first to leave at any budget.
Hard: those whose best confidence before the last exit is lowest, i.e. the last to leave early at any
budget: they need the whole cascade. Pixels come from the fetched dataset exactly (arrays), or from
the image files of the ImageNet index (centre-cropped to a square for display).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageOps

from dvt.config import Config
from dvt.data.cluttered import object_sides
from dvt.data.manifest import read_manifest
from dvt.errors import DvtError
from dvt.logits import read_logits
from dvt.reporting.figures import STYLE, new_figure, save
from dvt.reporting.inputs import RunFiles

TEST = "test"
INDEX_SIDE = 224  # display side of ImageNet-index images


@dataclass(frozen=True)
class Pick:
    sample: int  # row of the test split (the `sample` column of logits.parquet)
    label: int
    confidence: float  # easy: exit 1's; hard: the best before the last exit
    pred_first: int
    pred_last: int


@dataclass(frozen=True)
class Picks:
    run: str
    seed: int  # the seed whose model picked them (the first of params.yaml)
    logits: str  # the logits.parquet they come from
    grids: tuple[int, ...]
    easy: tuple[Pick, ...]
    hard: tuple[Pick, ...]


@dataclass(frozen=True, eq=False)
class Gallery:
    picks: Picks
    classes: list[str]
    images: dict[int, np.ndarray]  # sample -> uint8 (H, W) or (H, W, 3), the dataset's pixels
    # sample -> side of its object in px, where the dataset records it (cluttered-fashion-mnist)
    sides: dict[int, int] | None = None

    def mean_side(self, picks: tuple[Pick, ...]) -> float | None:
        if self.sides is None or not picks:
            return None
        return float(np.mean([self.sides[p.sample] for p in picks]))


def pick(run: RunFiles, *, size: int) -> Picks:
    """`size` easy and `size` hard test images of a cascade, by its logits; ties go to the lower sample."""
    path = run.logits_path
    test = read_logits(path, splits=[TEST])[TEST]
    early = test.confidence[:, :-1].max(axis=1)  # (n,) best confidence before the last exit
    easy = np.lexsort((test.sample, -test.confidence[:, 0].astype(np.float64)))[:size]
    hard = np.lexsort((test.sample, early.astype(np.float64)))[:size]

    def make(rows: np.ndarray, score: np.ndarray) -> tuple[Pick, ...]:
        return tuple(Pick(sample=int(test.sample[i]), label=int(test.labels[i]), confidence=float(score[i]),
                          pred_first=int(test.pred[i, 0]), pred_last=int(test.pred[i, -1])) for i in rows)

    return Picks(run=run.name, seed=run.seeds[0].seed, logits=str(path), grids=run.grids,
                 easy=make(easy, test.confidence[:, 0]), hard=make(hard, early))


def _array_images(folder: Path, samples: list[int]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    images = np.load(folder / "test_images.npy", mmap_mode="r")  # (N, H, W, C)
    labels = np.load(folder / "test_labels.npy", mmap_mode="r")
    if samples and max(samples) >= len(images):
        raise IndexError(max(samples))
    return {s: np.array(images[s]).squeeze(-1) if images.shape[-1] == 1 else np.array(images[s])
            for s in samples}, np.asarray(labels[samples])


def _index_images(folder: Path, source: Path, samples: list[int]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    rows = [line.rsplit(",", 1) for line in (folder / "test.csv").read_text().splitlines()[1:]]
    out, labels = {}, []
    for s in samples:
        rel, label = rows[s]
        with Image.open(source / rel) as img:
            square = ImageOps.fit(img.convert("RGB"), (INDEX_SIDE, INDEX_SIDE), Image.Resampling.BICUBIC)
        out[s] = np.asarray(square)
        labels.append(int(label))
    return out, np.asarray(labels)


def prepare(config: Config, picks: Picks) -> Gallery:
    """Read the pixels of the picked images (checked against the logits' labels) from the dataset."""
    folder, manifest = read_manifest(config.data)
    chosen = picks.easy + picks.hard
    samples = sorted({p.sample for p in chosen})
    logits, collect = picks.logits, config.with_seed(picks.seed).command("collect", picks.run)
    try:
        if manifest["format"] == "imagefolder-index":
            images, labels = _index_images(folder, Path(manifest["source"]), samples)
        else:
            images, labels = _array_images(folder, samples)
    except (OSError, IndexError, ValueError) as err:
        raise DvtError(f"the test images of {folder} do not match {logits} ({err}): rerun `dvt fetch`, then "
                       f"`{collect}`") from None
    by_sample = dict(zip(samples, labels.tolist()))
    if any(by_sample[p.sample] != p.label for p in chosen):
        raise DvtError(f"{logits} gives other labels than {folder} for the same test images: rerun "
                       f"`{collect}`")
    all_sides = object_sides(folder, TEST)
    sides = None if all_sides is None else {s: int(all_sides[s]) for s in samples}
    return Gallery(picks=picks, classes=list(manifest["classes"]), images=images, sides=sides)


def draw(folder: Path, gallery: Gallery) -> list[str]:
    """Two rows of images: easy (leave at exit 1) above hard (need the last exit)."""
    picks = gallery.picks
    n = max(1, len(picks.easy), len(picks.hard))
    first, last = picks.grids[0], picks.grids[-1]
    fig = new_figure(figsize=(1.3 * n + 0.6, 4.0))
    names = gallery.classes
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(2, n, squeeze=False)
        for row, shown, what in ((0, picks.easy, f"easy: leave at exit 1 ({first}x{first})"),
                                 (1, picks.hard, f"hard: need exit {len(picks.grids)} ({last}x{last})")):
            for i, ax in enumerate(axes[row]):
                ax.set_axis_off()
                if i >= len(shown):
                    continue
                p = shown[i]
                image = gallery.images[p.sample]
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
                pred = p.pred_first if row == 0 else p.pred_last
                said = "\u2713" if pred == p.label else f"\u2717 {names[pred]}"
                side = f"  {gallery.sides[p.sample]} px" if gallery.sides is not None else ""
                ax.set_title(f"{names[p.label]}\n#{p.sample}  c={p.confidence:.2f}{side}\n{said}", fontsize=6.5)
            mean = gallery.mean_side(shown)
            label = what if mean is None else f"{what}\nobjects {mean:.1f} px on average"
            axes[row][0].text(-0.08, 0.5, label, transform=axes[row][0].transAxes, rotation=90, ha="right",
                              va="center", fontsize=8)
    return save(fig, folder, "gallery")
