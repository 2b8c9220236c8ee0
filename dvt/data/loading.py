"""Train / calibration / test datasets with the right transforms, for every stage after fetch.

Two kinds of storage, one interface:
* arrays (Fashion-MNIST, CIFAR, synthetic): uint8 tensors in memory. At native size and without
  RandAugment, a whole batch is augmented at once (random crop with padding, flip, timm's random
  erasing) through `__getitems__`, which keeps a 28x28 epoch far below a second of data work on
  the CPU. With a resize (e.g. CIFAR at 224 px, paper Table 3) or RandAugment, each image goes
  through timm's PIL transforms instead.
* imagenet and folder: the CSV index written by fetch, read with PIL and timm's transforms: the training
  recipe of the paper's code (RandomResizedCrop, random interpolation, flip, RandAugment, random erasing)
  and bicubic resize to 256 then centre crop 224 for evaluation.

Use `make_loader` to build a DataLoader: it knows which datasets collate themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from dvt.config import Config
from dvt.data.images import open_image
from dvt.data.info import DatasetInfo, dataset_info
from dvt.data.manifest import read_manifest, verify_split
from dvt.errors import DvtError

SPLITS = ("train", "calibration", "test")


def _timm_transform(*, size: int, training: bool, config: Config, mean, std, crop_pct: float):
    from timm.data import create_transform

    t = config.train
    if training:
        return create_transform(size, is_training=True, auto_augment=t.randaugment, re_prob=t.random_erasing,
                                re_mode="pixel", interpolation="random", mean=mean, std=std)
    return create_transform(size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
                            mean=mean, std=std)


class ArrayImages(Dataset):
    """uint8 images (N, C, H, W) in memory; yields normalised float tensors (C, S, S) and int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, size: int, mean: list[float],
                 std: list[float], training: bool, pil_transform: Callable | None = None,
                 random_erasing: float = 0.0) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W)
        self.labels = torch.from_numpy(labels)
        self.size, self.training, self.pil_transform = size, training, pil_transform
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.erase = None
        if training and random_erasing > 0 and pil_transform is None:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(probability=random_erasing, mode="pixel", device="cpu")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([i])
        return x[0], int(y[0])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = self.labels[idx]
        if self.pil_transform is not None:
            mode = "L" if self.images.shape[1] == 1 else "RGB"
            imgs = [Image.fromarray(self.images[i].permute(1, 2, 0).squeeze(-1).numpy(), mode=mode) for i in idx]
            return torch.stack([self.pil_transform(im) for im in imgs]), labels
        x = self.images[idx].float().div_(255)  # (B, C, H, W) in [0, 1]
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        if self.training:
            x = random_crop_flip(x)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x, labels


def random_crop_flip(x: torch.Tensor, *, pad_fraction: float = 0.125) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch (pad = side/8) and horizontal flip, vectorised.

    x: (B, C, S, S) -> (B, C, S, S); draws from torch's global generator so a seeded run repeats.
    """
    b, _, s, _ = x.shape
    pad = max(1, int(s * pad_fraction))
    padded = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (b, 2))
    rows = (off[:, 0:1] + torch.arange(s)).view(b, 1, s, 1)  # (B, 1, S, 1)
    cols = (off[:, 1:2] + torch.arange(s)).view(b, 1, 1, s)
    flip = torch.rand(b) < 0.5
    cols = torch.where(flip.view(b, 1, 1, 1), cols.flip(-1), cols)
    batch = torch.arange(b).view(b, 1, 1, 1)
    chan = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]


class IndexedImages(Dataset):
    """Images listed in a fetch index CSV (path relative to `root`, label), loaded with PIL."""

    def __init__(self, root: Path, index_csv: Path, transform: Callable) -> None:
        lines = index_csv.read_text().splitlines()[1:]
        self.root = root
        self.items = [(p, int(y)) for p, y in (line.rsplit(",", 1) for line in lines)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        try:
            img = open_image(self.root / path)
        except DvtError as err:  # fetch opens only a sample of a large tree's images
            raise DvtError(f"{err}; replace or remove it and run dvt fetch again") from None
        return self.transform(img), label

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.items])


@dataclass(frozen=True)
class Splits:
    train: Dataset
    calibration: Dataset
    test: Dataset
    info: DatasetInfo
    classes: list[str]


def eval_transform(config: Config, manifest: dict) -> tuple[Callable, str]:
    """(PIL image -> normalised tensor (C, S, S), the PIL mode to convert to first) for images from
    outside the dataset (`dvt predict`): the evaluation transform of the dataset's own images."""
    info = dataset_info(config.data)
    if manifest["format"] == "imagefolder-index":
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        mean, std, crop_pct = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875
    else:
        mean, std, crop_pct = manifest["mean"], manifest["std"], 1.0
    transform = _timm_transform(size=info.image_size, training=False, config=config, mean=mean, std=std,
                                crop_pct=crop_pct)
    return transform, "L" if info.channels == 1 else "RGB"


def load_split(config: Config, split: str, *, training: bool | None = None) -> Dataset:
    """One split; `training` (default: split == 'train') selects the augmenting transform."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    training = split == "train" if training is None else training
    folder, manifest = read_manifest(config.data)
    verify_split(folder, manifest, split)
    info = dataset_info(config.data)
    if manifest["format"] == "imagefolder-index":
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        transform = _timm_transform(size=info.image_size, training=training, config=config,
                                    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=0.875)
        return IndexedImages(Path(manifest["source"]), folder / f"{split}.csv", transform)
    images = np.load(folder / f"{split}_images.npy")
    labels = np.load(folder / f"{split}_labels.npy")
    resized = info.image_size != manifest["image_size"]
    pil = None
    if resized or (training and config.train.randaugment):
        pil = _timm_transform(size=info.image_size, training=training, config=config, mean=manifest["mean"],
                              std=manifest["std"], crop_pct=1.0)
    return ArrayImages(images, labels, size=info.image_size, mean=manifest["mean"], std=manifest["std"],
                       training=training, pil_transform=pil, random_erasing=config.train.random_erasing)


def load_splits(config: Config) -> Splits:
    _, manifest = read_manifest(config.data)
    return Splits(**{s: load_split(config, s) for s in SPLITS}, info=dataset_info(config.data),
                  classes=list(manifest["classes"]))


def _self_collated(batch):
    return batch


def make_loader(dataset: Dataset, *, batch_size: int | None = None, shuffle: bool = False, num_workers: int = 0,
                generator: torch.Generator | None = None, sampler=None, drop_last: bool = False,
                batch_sampler: Sampler[list[int]] | None = None,
                worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """A DataLoader; in-memory arrays are fetched and augmented a whole batch at a time.

    Either batch_size (with shuffle or sampler, and drop_last) or a batch_sampler that makes the batches.
    """
    # torch's Subset forwards __getitems__ to the dataset it wraps, so look through it.
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    collate = _self_collated if isinstance(base, ArrayImages) else None
    batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else \
        {"batch_size": batch_size, "shuffle": shuffle if sampler is None else False, "sampler": sampler,
         "drop_last": drop_last}
    return DataLoader(dataset, **batching, num_workers=num_workers, generator=generator, collate_fn=collate,
                      persistent_workers=num_workers > 0, worker_init_fn=worker_init_fn)
