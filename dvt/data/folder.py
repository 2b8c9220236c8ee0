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

from dvt.data.images import is_regular_file, open_image
from dvt.errors import DvtError
from dvt.progress import progress

IMAGENET_CLASSES = 1000
# Where the test split may live; ImageNet's is val/.
TEST_FOLDERS = ("val", "test")
# Same suffixes as torchvision's ImageFolder, so our index and ImageFolder agree on what is an image.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _visible(name: str) -> bool:
    """Hidden entries (`.ipynb_checkpoints`, `.DS_Store`, `._x.jpg` of macOS) are not data."""
    return not name.startswith(".")


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))


def _images(class_dir: Path) -> list[str]:
    """Image paths under one class folder, relative to it, sorted; sub-folders are walked, as torchvision's
    ImageFolder does (following links), except hidden ones. Only regular files count (a FIFO named
    x.png would hang the loader), and a link back up the tree is refused (os.walk would follow
    `up -> ..` until the path is too long, indexing the tree again under every prefix)."""
    found = []
    walked: set[tuple[int, int]] = set()
    for here, dirs, files in os.walk(class_dir, followlinks=True):
        info = os.stat(here)
        if (info.st_dev, info.st_ino) in walked:
            raise DvtError(f"{here}: a link loop in the image tree (it leads back to a folder already walked); "
                           "remove the link")
        walked.add((info.st_dev, info.st_ino))
        dirs[:] = [d for d in dirs if _visible(d)]
        rel = Path(here).relative_to(class_dir)
        found += [(rel / f).as_posix() for f in files
                  if _visible(f) and f.lower().endswith(EXTENSIONS) and is_regular_file(Path(here) / f)]
    return sorted(found)


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


def classes_of(root: Path, *, imagenet: bool) -> tuple[list[str], dict[str, str]]:
    """(class names, our split -> its folder) of a tree whose class folders are valid: the same in train/
    and the test folder, at least two (ImageNet: 1000). Reads folder names only, so `dvt check` can
    afford it before every stage."""
    folders = split_folders(root, imagenet=imagenet)
    classes: list[str] | None = None
    for folder in folders.values():
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
    return classes, folders


def index(root: str | Path, *, imagenet: bool = False) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """The class names and, per split, (path relative to root, label) pairs, sorted; refuses a tree
    `classes_of` refuses, a split without images, and a train/ class folder without images (a class
    the model could never learn; the test split may lack a class)."""
    root = Path(root).expanduser()
    classes, folders = classes_of(root, imagenet=imagenet)
    found: dict[str, list[tuple[str, int]]] = {}
    for split, folder in folders.items():
        items = []
        for label, name in enumerate(progress(classes, desc=f"index {folder}/", unit="class", leave=False)):
            images = _images(root / folder / name)
            if split == "train" and not images:
                raise DvtError(f"{root / folder / name}: no images (looked for {', '.join(EXTENSIONS)}); every "
                               "class needs training images: add some or remove the folder from every split")
            items += [(f"{folder}/{name}/{rel}", label) for rel in images]
        if not items:
            raise DvtError(f"{root / folder}: no images found (looked for {', '.join(EXTENSIONS)})")
        found[split] = items
    return classes, found


def scan(root: str | Path, *, imagenet: bool = False, check_images: int = 500,
         seed: int = 0) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """`index`, then open up to `check_images` images per split (all of a small tree, a random sample of
    a large one) to catch unreadable files at fetch rather than hours into training."""
    root = Path(root).expanduser()
    classes, found = index(root, imagenet=imagenet)
    rng = random.Random(seed)
    for items in found.values():
        for rel, _ in rng.sample(items, min(check_images, len(items))):
            open_image(root / rel)
    return classes, found
