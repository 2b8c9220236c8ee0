"""A local ILSVRC2012 folder (train/ and val/, one sub-folder per class): validated and indexed.

The images are never copied: `dvt fetch` writes CSV indexes (relative path, label) that the loaders
read, so a 140 GB dataset costs a few MB under data/imagenet/.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dvt.errors import DvtError

NUM_CLASSES = 1000
SPLITS = {"train": "train", "test": "val"}  # our split name -> folder name
# Same suffixes as torchvision's ImageFolder, so our index and ImageFolder agree on what is an image.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def scan(root: str | Path, *, num_classes: int = NUM_CLASSES, check_images: int = 32,
         seed: int = 0) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Return the class names and, per split, (path relative to root, label) pairs, sorted.

    Refuses a folder that is missing, has no images, or whose class folders differ from
    `num_classes` or between train/ and val/; opens `check_images` random images to catch unreadable
    files early rather than hours into training.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DvtError(f"data.source = {str(root)!r}: no such folder; point it at ILSVRC2012 with train/ and val/")
    missing = [f"{folder}/" for folder in SPLITS.values() if not (root / folder).is_dir()]
    if missing:
        raise DvtError(f"data.source = {str(root)!r}: missing {' and '.join(missing)} (expected train/ and "
                       "val/ with one folder per class)")
    classes: list[str] | None = None
    index: dict[str, list[tuple[str, int]]] = {}
    for split, folder in SPLITS.items():
        split_dir = root / folder
        found = _class_folders(split_dir)
        if len(found) != num_classes:
            raise DvtError(f"{split_dir}: found {len(found)} class folders, ImageNet has {num_classes}")
        if classes is not None and found != classes:
            raise DvtError(f"{split_dir}: class folders differ from train/ (e.g. "
                           f"{sorted(set(found) ^ set(classes))[:3]})")
        classes = found
        items = []
        for label, name in enumerate(tqdm(found, desc=f"index {folder}/", unit="class", leave=False)):
            for entry in sorted(os.scandir(split_dir / name), key=lambda e: e.name):
                if entry.is_file() and entry.name.lower().endswith(EXTENSIONS):
                    items.append((f"{folder}/{name}/{entry.name}", label))
        if not items:
            raise DvtError(f"{split_dir}: no images found (looked for {', '.join(EXTENSIONS)})")
        index[split] = items
    rng = random.Random(seed)
    for split, items in index.items():
        for rel, _ in rng.sample(items, min(check_images, len(items))):
            try:
                with Image.open(root / rel) as img:
                    img.convert("RGB").load()
            except (OSError, ValueError) as err:
                raise DvtError(f"{root / rel}: unreadable image ({err})") from None
    assert classes is not None
    return classes, index
