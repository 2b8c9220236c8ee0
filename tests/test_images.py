"""Odd image files (issue #31, item 2): 16-bit and float images are scaled, not clipped to white; FIFOs,
decompression bombs and link loops are one line naming the file, never a hang or a traceback."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dvt.data import folder
from dvt.data.images import open_image
from dvt.errors import DvtError
from dvt.stages.predict import image_paths
from tests.helpers import write_folder


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO that is opened blocks until a writer comes: fail after 10 s instead of waiting forever."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("hung (a FIFO was opened?)"))
    signal.alarm(10)
    yield
    signal.alarm(0)


def gradient(bits: int) -> np.ndarray:
    """A 4x64 ramp over the whole range of `bits`-bit values."""
    top = 2 ** bits - 1
    return np.tile(np.linspace(0, top, 64).round(), (4, 1))


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    values = gradient(16)
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        clipped = np.asarray(img.convert("RGB"))
    assert (clipped == 255).mean() > 0.95  # what PIL alone feeds the model
    ours = np.asarray(open_image(tmp_path / "deep.png"))  # (4, 64, 3)
    assert ours.shape == (4, 64, 3)
    assert np.abs(ours[..., 0].astype(float) - values / 257).max() <= 0.5
    assert np.asarray(open_image(tmp_path / "deep.png", "L")).tolist() == ours[..., 0].tolist()


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_a_float_tiff_in_0_1_or_0_255_is_scaled(tmp_path, scale):
    values = gradient(8) / 255 * scale
    Image.fromarray(values.astype(np.float32)).save(tmp_path / "float.tif")
    ours = np.asarray(open_image(tmp_path / "float.tif", "L")).astype(float)
    assert np.abs(ours - gradient(8)).max() <= 0.5


def test_float_values_of_no_known_range_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 300.0, np.float32)).save(tmp_path / "odd.tif")
    with pytest.raises(DvtError, match=r"odd.tif: unreadable image \(float values 300..300 are neither"):
        open_image(tmp_path / "odd.tif")


def test_a_fifo_named_like_an_image_is_refused_or_skipped_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(DvtError, match=r"pipe.png: not a regular file"):
        open_image(tmp_path / "pipe.png")
    Image.new("L", (8, 8)).save(tmp_path / "real.png")
    assert image_paths([str(tmp_path)]) == [tmp_path / "real.png"]  # a folder's FIFO is passed over


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    Image.new("L", (40, 40)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels is then over PIL's 2x limit
    with pytest.raises(DvtError) as err:
        open_image(tmp_path / "bomb.png")
    assert str(err.value).startswith(f"{tmp_path / 'bomb.png'}: refused as a decompression bomb")
    assert "\n" not in str(err.value)


def test_folder_trees_skip_fifos_and_refuse_link_loops(tmp_path):
    write_folder(tmp_path, classes=["a", "b"])
    os.mkfifo(tmp_path / "train" / "a" / "pipe.png")
    classes, found = folder.index(tmp_path)
    assert not [p for p, _ in found["train"] if p.endswith("pipe.png")]
    assert len(found["train"]) == 6  # 3 images a class, as written
    folder.scan(tmp_path)  # opens every image of the small tree, not the FIFO
    # a link back up the tree: before, 12 images became 5,412 rows with class b's under class a
    (tmp_path / "train" / "a" / "up").symlink_to(Path(".."))
    with pytest.raises(DvtError, match=r"a link loop in the image tree .* remove the link"):
        folder.index(tmp_path)
