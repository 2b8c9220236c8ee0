"""What a model needs to know about a dataset before any file is read: size, channels, classes."""

from __future__ import annotations

from dataclasses import dataclass

from dvt.config import DataConfig
from dvt.errors import DvtError

# name -> (native image side, channels, classes)
NATIVE = {
    "fashion-mnist": (28, 1, 10),
    "cifar10": (32, 3, 10),
    "cifar100": (32, 3, 100),
    "imagenet": (224, 3, 1000),
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_size: int  # side of the square image the model sees (after any resize)
    channels: int
    num_classes: int


# Image-folder trees, indexed by `dvt fetch` and read with PIL; `folder`: any number of classes, found
# from the class folders of data.source/train/, images resized to data.image_size (default 224).
FOLDER_DATASETS = ("imagenet", "folder")


def dataset_info(data: DataConfig) -> DatasetInfo:
    if data.dataset == "folder":
        from dvt.data.folder import class_names

        if not data.source:
            raise DvtError("data.source is not set: for folder it must name a folder with train/ and val/ or "
                           "test/, one sub-folder per class")
        native, channels, classes = 224, 3, len(class_names(data.source))
    elif data.dataset == "synthetic":
        s = data.synthetic
        native, channels, classes = s.image_size, s.channels, s.classes
    elif data.dataset == "cluttered-fashion-mnist":
        native, channels, classes = data.cluttered.canvas, 1, 10
    else:
        native, channels, classes = NATIVE[data.dataset]
    return DatasetInfo(name=data.dataset, image_size=data.image_size or native, channels=channels,
                       num_classes=classes)
