"""An image folder tree (train/ plus val/ or test/, one sub-folder per class): validated and indexed.

`data.dataset: folder` takes any such tree (any number of classes, any image sizes; images are
resized by the transforms); `imagenet` is the same with ILSVRC2012's layout checked: train/ and val/,
1000 classes. The images are never copied: `dvt fetch` writes CSV indexes (relative path, label)
that the loaders read, so a 140 GB dataset costs a few MB under data/<dataset>/.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image

from dvt.errors import DvtError
from dvt.progress import progress

IMAGENET_CLASSES = 1000
# Where the test split may live; ImageNet's is val/.
TEST_FOLDERS = ("val", "test")
# Same suffixes as torchvision's ImageFolder, so our index and ImageFolder agree on what is an image.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def split_folders(root: Path, *, imagenet: bool) -> dict[str, str]:
    """Our split name -> its folder under root; DvtError if the tree lacks one."""
    what = "the ILSVRC2012 folder" if imagenet else "a folder"
    if not root.is_dir():
        raise DvtError(f"data.source = {str(root)!r}: no such folder; point it at {what} with train/ and "
                       f"{'val/' if imagenet else 'val/ or test/'}")
    tests = ("val",) if imagenet else TEST_FOLDERS
    test = next((t for t in tests if (root / t).is_dir()), None)
    missing = [f for f, there in (("train/", (root / "train").is_dir()), (" or ".join(f"{t}/" for t in tests),
                                                                         test is not None)) if not there]
    if missing:
        raise DvtError(f"data.source = {str(root)!r}: missing {' and '.join(missing)} (expected train/ and "
                       f"{'val/' if imagenet else 'val/ or test/'} with one folder per class)")
    return {"train": "train", "test": test}


def class_names(root: str | Path, *, imagenet: bool = False) -> list[str]:
    """The class folders of train/, sorted (their order is the label order)."""
    root = Path(root).expanduser()
    return _class_folders(root / split_folders(root, imagenet=imagenet)["train"])


def scan(root: str | Path, *, imagenet: bool = False, check_images: int = 32,
         seed: int = 0) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Return the class names and, per split, (path relative to root, label) pairs, sorted.

    Refuses a tree that is missing, has no images, has fewer than two classes or different class
    folders in train/ and the test folder (ImageNet: other than 1000); opens `check_images` random
    images per split to catch unreadable files early rather than hours into training.
    """
    root = Path(root).expanduser()
    folders = split_folders(root, imagenet=imagenet)
    classes: list[str] | None = None
    for folder in folders.values():  # the class folders first: a bad tree fails before any indexing
        split_dir = root / folder
        found = _class_folders(split_dir)
        if imagenet and len(found) != IMAGENET_CLASSES:
            raise DvtError(f"{split_dir}: found {len(found)} class folders, ImageNet has {IMAGENET_CLASSES} "
                           "(data.dataset: folder takes any number)")
        if len(found) < 2:
            raise DvtError(f"{split_dir}: found {len(found)} class folder{'s' if len(found) != 1 else ''}; "
                           "a classifier needs at least 2")
        if classes is not None and found != classes:
            raise DvtError(f"{split_dir}: class folders differ from train/ (e.g. "
                           f"{sorted(set(found) ^ set(classes))[:3]})")
        classes = found
    assert classes is not None
    index: dict[str, list[tuple[str, int]]] = {}
    for split, folder in folders.items():
        split_dir = root / folder
        items = []
        for label, name in enumerate(progress(classes, desc=f"index {folder}/", unit="class", leave=False)):
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
    return classes, index
