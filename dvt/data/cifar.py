"""CIFAR-10/100 in the "python version" archive: a tar.gz of pickled batches.

Each batch is a dict with `data` (N, 3072) uint8 in channel-major order (1024 R, 1024 G, 1024 B,
rows of 32) and `labels` (CIFAR-10) or `fine_labels` (CIFAR-100). We read the batches straight
from the archive, so nothing is extracted to disk.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvt.errors import DvtError


@dataclass(frozen=True)
class CifarArchive:
    url: str
    filename: str
    md5: str
    folder: str  # top folder inside the tar
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str


def _from_torchvision(cls) -> dict[str, str]:
    # torchvision keeps the canonical URLs and checksums; take them from there rather than retype them.
    return {"url": cls.url, "filename": cls.filename, "md5": cls.tgz_md5, "folder": cls.base_folder}


def archives() -> dict[str, CifarArchive]:
    from torchvision.datasets import CIFAR10, CIFAR100

    return {
        "cifar10": CifarArchive(**_from_torchvision(CIFAR10), train=tuple(n for n, _ in CIFAR10.train_list),
                                test=tuple(n for n, _ in CIFAR10.test_list), meta=CIFAR10.meta["filename"],
                                label_key="labels", names_key=CIFAR10.meta["key"]),
        "cifar100": CifarArchive(**_from_torchvision(CIFAR100), train=tuple(n for n, _ in CIFAR100.train_list),
                                 test=tuple(n for n, _ in CIFAR100.test_list), meta=CIFAR100.meta["filename"],
                                 label_key="fine_labels", names_key=CIFAR100.meta["key"]),
    }


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, archive: CifarArchive, *, downloaded: bool) -> None:
    """DvtError unless the archive has the published md5 (`downloaded`: it is ours to delete and fetch again)."""
    digest = md5sum(path)
    if digest != archive.md5:
        advice = "delete it and run dvt fetch again" if downloaded else "download it again"
        raise DvtError(f"{path}: md5 {digest} does not match the published {archive.md5}; the archive is "
                       f"corrupt or truncated: {advice}")


def read_cifar(path: str | Path, archive: CifarArchive, *, downloaded: bool = True) -> dict[str, object]:
    """Verify the archive's md5 and return train/test images (N, 32, 32, 3) uint8, labels, class names."""
    path = Path(path)
    verify(path, archive, downloaded=downloaded)
    try:
        with tarfile.open(path, "r:gz") as tar:
            def load(name: str) -> dict:
                member = tar.extractfile(f"{archive.folder}/{name}")
                if member is None:
                    raise KeyError(name)
                return pickle.load(member, encoding="latin1")

            def split(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
                batches = [load(n) for n in names]
                data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
                labels = np.concatenate([np.asarray(b[archive.label_key], dtype=np.int64) for b in batches])
                # (N, 3072) channel-major -> (N, 32, 32, 3)
                return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels

            train_x, train_y = split(archive.train)
            test_x, test_y = split(archive.test)
            classes = [str(c) for c in load(archive.meta)[archive.names_key]]
    except (tarfile.TarError, KeyError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as err:
        raise DvtError(f"{path}: cannot read CIFAR batches ({err}); delete it and fetch again") from None
    return {"train": (train_x, train_y), "test": (test_x, test_y), "classes": classes}


def write_cifar(path: str | Path, archive: CifarArchive, *, train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray], classes: list[str]) -> None:
    """Write images (N, 32, 32, 3) and labels as a CIFAR python tar.gz (tests make real-format files)."""
    import io

    def batch(x: np.ndarray, y: np.ndarray) -> dict:
        return {"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), archive.label_key: [int(v) for v in y]}

    chunks = np.array_split(np.arange(len(train[0])), len(archive.train))
    files = {name: batch(train[0][idx], train[1][idx]) for name, idx in zip(archive.train, chunks)}
    files[archive.test[0]] = batch(*test)
    files[archive.meta] = {archive.names_key: classes}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{archive.folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
