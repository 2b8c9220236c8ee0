"""One way to open an image file for every reader (folder trees at fetch and in training, `dvt predict`).

PIL's `convert("RGB")` clips rather than scales: a 16-bit PNG (mode I;16 or I, values up to 65535) or a
float TIFF (mode F, values in [0, 1]) comes out almost all white, and the model is fed that without a
word. Here such images are scaled to 8 bits by their mode first, and what cannot be read as an
image (a FIFO or device named *.png, a header that claims more pixels than PIL's bomb guard allows,
float values outside [0, 1] and [0, 255]) is one line naming the file.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
from PIL import Image

from dvt.errors import DvtError


def is_regular_file(path: str | Path) -> bool:
    """A regular file (links followed). Opening a FIFO named img.png would wait for a writer forever."""
    try:
        return stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return False


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float single-channel images as 8-bit "L", scaled by their range; others as they are."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(img, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{img.mode} values {values.min()}..{values.max()} are not 16-bit")
        return Image.fromarray((values / 257).round().astype(np.uint8))
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise ValueError(f"float values {values.min():g}..{values.max():g} are neither in [0, 1] nor [0, 255]")
        scale = 255.0 if values.max() <= 1.0 else 1.0
        return Image.fromarray((values * scale).round().astype(np.uint8))
    return img


def open_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """The image at `path`, loaded, in `mode`; DvtError (one line naming the file) if it cannot be."""
    if not is_regular_file(path):
        raise DvtError(f"{path}: not a regular file (a folder, FIFO or device named like an image)")
    try:
        with Image.open(path) as img:
            return to_8bit(img).convert(mode)
    except Image.DecompressionBombError as err:
        raise DvtError(f"{path}: refused as a decompression bomb ({err})".replace("\n", " ")) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DvtError(f"{path}: unreadable image ({err})") from None
