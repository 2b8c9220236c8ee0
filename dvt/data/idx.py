"""The IDX format of MNIST and Fashion-MNIST (gzip-compressed), read with numpy.

Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one big-endian
uint32 per dimension; the data follow as a flat array.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from dvt.errors import DvtError

_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read one `.gz` IDX file into a uint8 array of the shape its header gives."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DvtError(f"{path}: not a readable gzip IDX file ({err}); delete it and fetch again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DvtError(f"{path}: bad IDX header; delete it and fetch again")
    if raw[2] != _UBYTE:
        raise DvtError(f"{path}: IDX type code {raw[2]:#x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DvtError(f"{path}: truncated IDX header; delete it and fetch again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DvtError(f"{path}: IDX body has {len(raw) - header} bytes, header says {expected}; "
                       "the file is truncated or corrupt: delete it and fetch again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def count(path: str | Path) -> int:
    """The first dimension (number of items) of a `.gz` IDX file, from its header alone."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(8)
    except (OSError, EOFError, zlib.error) as err:
        raise DvtError(f"{path}: not a readable gzip IDX file ({err})") from None
    if len(head) < 8 or head[:2] != b"\0\0" or head[3] < 1:
        raise DvtError(f"{path}: bad IDX header")
    return int.from_bytes(head[4:8], "big")


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip IDX file (used by tests to make files in the real format)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
