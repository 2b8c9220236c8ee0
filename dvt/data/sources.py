"""The datasets' sources: where each dataset's raw files are (or are downloaded to), how they are read
and validated, and how they become the uint8 arrays (or, for ImageNet and folders, the CSV index) that
`dvt fetch` writes into data/<dataset>/ with a MANIFEST.json.

A calibration split is held out of train deterministically (CALIBRATION_SEED) for the threshold search:
the paper fits thresholds on held-out images (§5).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from dvt.config import DataConfig
from dvt.data import cifar, cluttered, folder, idx
from dvt.data.info import FOLDER_DATASETS
from dvt.data.manifest import sha256
from dvt.errors import DvtError

CALIBRATION_SEED = 0
# Debian's dataset-fashion-mnist package puts the four IDX files here (recompressed: their md5
# differs from upstream's, so they are validated by structure instead).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def check_calibration_size(size: int, n: int) -> None:
    if size >= n:
        raise DvtError(f"data.calibration_size = {size} is not allowed: the train split has {n} images "
                       f"and must keep at least one (valid: 0..{n - 1})")


def calibration_split(n: int, size: int, *, seed: int = CALIBRATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train indices, calibration indices): a fixed random `size` of range(n) is held out."""
    check_calibration_size(size, n)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])


# --- sources -----------------------------------------------------------------------------------

# A source loader returns (splits {name: (images (N, H, W, C) uint8, labels)}, class names, where the
# data came from, extras): extras may hold "objects" {split: (N, 3) boxes} and "source_files"
# {file name: sha256} of the raw files read.
Loaded = tuple[dict, list[str], str, dict]


def _fashion_mnist_files(data: DataConfig) -> Path | None:
    """The folder holding the four IDX files: data.source, else Debian's; None: download them."""
    candidates = [Path(data.source).expanduser()] if data.source else [DEBIAN_FASHION_MNIST]
    folder = next((c for c in candidates if all((c / f).is_file() for fs in FASHION_FILES.values() for f in fs)),
                  None)
    if folder is None and data.source:
        raise DvtError(f"data.source = {data.source!r}: expected the four Fashion-MNIST IDX files "
                       f"({', '.join(f for fs in FASHION_FILES.values() for f in fs)})")
    return folder


def _fashion_mnist(data: DataConfig) -> Loaded:
    from torchvision.datasets import FashionMNIST

    upstream_md5 = dict(FashionMNIST.resources)
    folder = _fashion_mnist_files(data)
    if folder is None:
        folder = Path(data.root) / "raw" / "fashion-mnist"
        if not data.download:
            raise DvtError("Fashion-MNIST not found in /usr/share/datasets/fashion-mnist (apt-get install "
                           "dataset-fashion-mnist) and data.download is false")
        _download_fashion_mnist(folder, FashionMNIST.mirrors, upstream_md5)
    splits = {}
    for split, (images_file, labels_file) in FASHION_FILES.items():
        x, y = idx.read_idx(folder / images_file), idx.read_idx(folder / labels_file)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DvtError(f"{folder / images_file}: images {x.shape} and labels {y.shape} do not pair up")
        splits[split] = (x[..., None], y.astype(np.int64))  # (N, 28, 28, 1)
    source = str(folder)
    if folder == DEBIAN_FASHION_MNIST:
        source += " (Debian package dataset-fashion-mnist)"
    checksums = {f: f"sha256:{sha256(folder / f)}" for fs in FASHION_FILES.values() for f in fs}
    return splits, list(FashionMNIST.classes), source, {"source_files": checksums}


def _download_fashion_mnist(folder: Path, mirrors: list[str], md5: dict[str, str]) -> None:
    from torchvision.datasets.utils import check_integrity, download_url

    with _removed_if_left_empty(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for name, digest in md5.items():
            if check_integrity(str(folder / name), digest):
                continue
            errors = []
            for mirror in mirrors:
                try:
                    download_url(mirror + name, str(folder), filename=name, md5=digest)
                    break
                except (OSError, RuntimeError) as err:
                    errors.append(f"{mirror}: {err}")
            else:
                raise DvtError(f"could not download {name} ({'; '.join(errors)}); install Debian's "
                               "dataset-fashion-mnist or set data.source to a folder with the IDX files")


@contextlib.contextmanager
def _removed_if_left_empty(folder: Path) -> Iterator[None]:
    """A download into `folder` that fails removes the folders it created (data/raw/...) if they are
    still empty, so that a failed fetch leaves the tree as it found it."""
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    try:
        yield
    except BaseException:
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _cifar_source(data: DataConfig) -> Path | None:
    """The archive data.source names (a file, or a folder holding it); None when data.source is null."""
    if not data.source:
        return None
    archive = cifar.archives()[data.dataset]
    path = Path(data.source).expanduser()
    path = path / archive.filename if path.is_dir() else path
    if not path.is_file():
        raise DvtError(f"data.source = {data.source!r}: no {archive.filename} there")
    return path


def _cifar(data: DataConfig) -> Loaded:
    archive = cifar.archives()[data.dataset]
    path = _cifar_source(data)
    if path is None:
        path = Path(data.root) / "raw" / archive.filename
        if not path.is_file():
            if not data.download:
                raise DvtError(f"{path} not found and data.download is false")
            from torchvision.datasets.utils import download_url

            try:
                with _removed_if_left_empty(path.parent):
                    download_url(archive.url, str(path.parent), filename=archive.filename, md5=archive.md5)
            except (OSError, RuntimeError) as err:
                raise DvtError(f"could not download {archive.url} ({err}); download it by hand and set "
                               "data.source to the file") from None
    parsed = cifar.read_cifar(path, archive, downloaded=not data.source)
    return ({"train": parsed["train"], "test": parsed["test"]}, parsed["classes"], str(path),
            {"source_files": {path.name: f"sha256:{sha256(path)}"}})


def _cluttered_fashion_mnist(data: DataConfig) -> Loaded:
    splits, classes, source, extras = _fashion_mnist(data)
    derived, objects = cluttered.derive(splits, data.cluttered)
    return (derived, classes, f"{source}, composed by dvt.data.cluttered (seed {data.cluttered.seed})",
            {**extras, "objects": objects})


def _synthetic(data: DataConfig) -> Loaded:
    from dvt.data import synthetic  # imports torch: only when needed

    s = data.synthetic
    return synthetic.generate(s), [f"class_{i}" for i in range(s.classes)], f"generated (seed {s.seed})", {}


def train_count(data: DataConfig) -> int | None:
    """Images in the source's train split (calibration included), read and validated as far as `dvt
    fetch` would before writing anything; None where the source is still to be downloaded."""
    if data.dataset == "synthetic":
        return data.synthetic.train_size
    if data.dataset in FOLDER_DATASETS:
        _require_source(data)
        # scan, not just index: it opens the images fetch would open, so that a bad one stops the
        # engines before they delete data/<dataset>/ for the fetch that would refuse it.
        return len(folder.scan(data.source, imagenet=data.dataset == "imagenet")[1]["train"])
    if data.dataset in ("cifar10", "cifar100"):
        path = _cifar_source(data)
        if path is None:
            path = Path(data.root) / "raw" / cifar.archives()[data.dataset].filename
            if not path.is_file():
                return None
        return len(cifar.read_cifar(path, cifar.archives()[data.dataset], downloaded=not data.source)["train"][1])
    files = _fashion_mnist_files(data)  # fashion-mnist and its cluttered derivation: same images
    return idx.count(files / FASHION_FILES["train"][1]) if files is not None else None


# --- writers -----------------------------------------------------------------------------------

def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, H, W, C) in [0, 1], accumulated in float64."""
    total = np.zeros(x.shape[-1])
    sq = np.zeros(x.shape[-1])
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        sq += (block ** 2).sum(axis=(0, 1, 2))
    count = x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 1e-12))
    return mean.round(6).tolist(), std.round(6).tolist()


def prepare_arrays(data: DataConfig) -> tuple[tuple[dict, dict], dict[str, object]]:
    loader = {"fashion-mnist": _fashion_mnist, "cluttered-fashion-mnist": _cluttered_fashion_mnist,
              "cifar10": _cifar, "cifar100": _cifar, "synthetic": _synthetic}[data.dataset]
    splits, classes, source, extras = loader(data)
    x_train, y_train = splits["train"]
    keep, held = calibration_split(len(x_train), data.calibration_size)
    arrays = {"train": (x_train[keep], y_train[keep]), "calibration": (x_train[held], y_train[held]),
              "test": splits["test"]}
    # Per-image boxes (cluttered items) follow their images into the calibration split.
    boxes = extras.get("objects")
    objects = {"train": boxes["train"][keep], "calibration": boxes["train"][held], "test": boxes["test"]} \
        if boxes else {}
    labels = np.concatenate([y for _, y in arrays.values()])
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DvtError(f"{source}: labels span {labels.min()}..{labels.max()} but there are {len(classes)} classes")
    mean, std = _channel_stats(arrays["train"][0])
    body = {"format": "arrays", "source": source, **_source_files(extras), "classes": classes,
            "counts": {k: int(len(v[1])) for k, v in arrays.items()},
            "image_size": int(x_train.shape[1]), "channels": int(x_train.shape[-1]), "mean": mean, "std": std}
    return (arrays, objects), body


def _source_files(extras: dict) -> dict:
    return {"source_files": extras["source_files"]} if "source_files" in extras else {}


def write_arrays(tmp: Path, content: tuple[dict, dict]) -> None:
    """content: ({split: (images, labels)}, {split: object boxes}) as `prepare_arrays` returns it."""
    arrays, objects = content
    for split, (x, y) in arrays.items():
        np.save(tmp / f"{split}_images.npy", np.ascontiguousarray(x, dtype=np.uint8))
        np.save(tmp / f"{split}_labels.npy", np.asarray(y, dtype=np.int64))
    for split, obj in objects.items():
        np.save(tmp / cluttered.objects_file(split), np.ascontiguousarray(obj))


def _require_source(data: DataConfig) -> None:
    if not data.source:
        raise DvtError(f"data.source is not set: for {data.dataset} it must name "
                       + ("the ILSVRC2012 folder (with train/ and val/)" if data.dataset == "imagenet"
                          else "a folder with train/ and val/ or test/, one sub-folder per class"))


def prepare_folder(data: DataConfig) -> tuple[dict[str, list[tuple[str, int]]], dict[str, object]]:
    """imagenet or folder: the tree at data.source, indexed (the images stay where they are)."""
    imagenet = data.dataset == "imagenet"
    _require_source(data)
    classes, index = folder.scan(data.source, imagenet=imagenet)
    keep, held = calibration_split(len(index["train"]), data.calibration_size)
    rows = {"train": [index["train"][i] for i in keep], "calibration": [index["train"][i] for i in held],
            "test": index["test"]}
    return rows, {"format": "imagefolder-index", "source": str(Path(data.source).expanduser().resolve()),
                  "classes": classes, "counts": {k: len(v) for k, v in rows.items()},
                  # The images keep their own sizes; the transforms resize them to data.image_size.
                  "image_size": None, "channels": 3}


def write_index(tmp: Path, rows: dict[str, list[tuple[str, int]]]) -> None:
    for split, items in rows.items():
        lines = ["path,label"] + [f"{path},{label}" for path, label in items]
        (tmp / f"{split}.csv").write_text("\n".join(lines) + "\n")
