"""`dvt fetch` on files written in the true formats: IDX, CIFAR python tar.gz, ImageNet folders."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dvt.cli import main
from dvt.data import cifar, idx
from dvt.data.loading import load_split, load_splits, make_loader
from dvt.data.sources import FASHION_FILES, calibration_split
from dvt.errors import DvtError
from dvt.stages import fetch
from tests.helpers import make_config, random_images, write_fashion, write_folder


def test_idx_round_trip_and_truncation(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    idx.write_idx(tmp_path / "a.gz", x)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a.gz"), x)
    data = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "b.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DvtError, match="delete it and fetch again"):
        idx.read_idx(tmp_path / "b.gz")


def test_fashion_mnist_from_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    raw = write_fashion(tmp_path / "raw", rng)
    config = make_config(tmp_path, data={"dataset": "fashion-mnist", "source": str(tmp_path / "raw"),
                                         "calibration_size": 20})
    manifest = fetch.run(config)
    assert manifest["counts"] == {"train": 100, "calibration": 20, "test": 30}
    assert (manifest["image_size"], manifest["channels"], len(manifest["classes"])) == (28, 1, 10)
    out = tmp_path / "data" / "fashion-mnist"
    train = np.load(out / "train_images.npy")
    cal = np.load(out / "calibration_images.npy")
    keep, held = calibration_split(120, 20)
    # The stored splits are exactly the source rows named by the deterministic split.
    np.testing.assert_array_equal(train[..., 0], raw["train"][keep])
    np.testing.assert_array_equal(cal[..., 0], raw["train"][held])
    np.testing.assert_array_equal(np.load(out / "test_images.npy")[..., 0], raw["test"])
    assert json.loads((out / "MANIFEST.json").read_text())["files"] == manifest["files"]


def test_calibration_split_is_deterministic_and_disjoint():
    a_train, a_cal = calibration_split(1000, 100)
    b_train, b_cal = calibration_split(1000, 100)
    np.testing.assert_array_equal(a_cal, b_cal)
    assert len(a_cal) == 100 and len(a_train) == 900
    assert not set(a_cal) & set(a_train)
    assert sorted(set(a_cal) | set(a_train)) == list(range(1000))
    with pytest.raises(DvtError, match="calibration_size = 1000 is not allowed"):
        calibration_split(1000, 1000)


def test_rerun_is_a_noop_and_a_change_refetches(tmp_path, capsys):
    config = make_config(tmp_path, data={"dataset": "synthetic", "calibration_size": 10,
                                         "synthetic": {"train_size": 50, "test_size": 10}})
    fetch.run(config)
    manifest = tmp_path / "data" / "synthetic" / "MANIFEST.json"
    stamp = manifest.stat().st_mtime_ns
    fetch.run(config)
    assert manifest.stat().st_mtime_ns == stamp
    assert "up to date" in capsys.readouterr().out
    bigger = dataclasses.replace(config, data=dataclasses.replace(config.data, calibration_size=20))
    assert fetch.run(bigger)["counts"]["calibration"] == 20


def test_stages_refuse_data_fetched_with_other_params(tmp_path):
    config = make_config(tmp_path, data={"dataset": "synthetic", "calibration_size": 10,
                                         "synthetic": {"train_size": 50, "test_size": 10}})
    fetch.run(config)
    assert len(load_split(config, "calibration")) == 10
    edited = dataclasses.replace(config, data=dataclasses.replace(config.data, calibration_size=20))
    with pytest.raises(DvtError, match=r"fetched with data.calibration_size = 10.*run `dvt fetch` again"):
        load_split(edited, "train")
    fetch.run(edited)
    assert len(load_split(edited, "calibration")) == 20


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    change(manifest)
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage, message", [
    (lambda f: _truncate(f / "MANIFEST.json"), "MANIFEST.json is not a readable manifest: run `dvt fetch` again"),
    (lambda f: _edit_manifest(f, lambda m: m["counts"].update(test=5)),
     "MANIFEST.json was changed after `dvt fetch` wrote it: run `dvt fetch` again"),
    (lambda f: _edit_manifest(f, lambda m: m.update(classes=m["classes"][:3])),
     "MANIFEST.json was changed after `dvt fetch` wrote it: run `dvt fetch` again"),
    (lambda f: _edit_manifest(f, lambda m: m.pop("classes")),
     "MANIFEST.json was changed after `dvt fetch` wrote it: run `dvt fetch` again"),
    (lambda f: (f / "train_labels.npy").unlink(), "train_labels.npy is missing: run `dvt fetch` again"),
    (lambda f: _truncate(f / "train_images.npy"),
     "train_images.npy changed after `dvt fetch` wrote it (sha256 differs): run `dvt fetch` again"),
    (lambda f: np.save(f / "train_labels.npy", np.zeros(40, np.int64)),
     "train_labels.npy changed after `dvt fetch` wrote it (sha256 differs): run `dvt fetch` again"),
])
def test_a_damaged_or_edited_dataset_is_one_line_and_fetch_repairs_it(tmp_path, capsys, damage, message):
    """A hand-edited manifest or changed data files used to be taken as they were, or end in a
    JSONDecodeError / KeyError / ValueError traceback (issue #15, items 9 and 11)."""
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"dataset": "synthetic", "root": str(tmp_path / "data"), "calibration_size": 10,
                 "synthetic": {"train_size": 50, "test_size": 10}},
        "model": {"backbone": "vit_micro"}, "runs": {"one": {"grids": [4]}}, "runs_dir": str(tmp_path / "runs"),
        "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0}}))
    assert main(["fetch", "--params", str(params)]) == 0
    damage(tmp_path / "data" / "synthetic")
    capsys.readouterr()
    assert main(["train", "--params", str(params), "--run", "one"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs" / "one").exists()
    assert main(["fetch", "--params", str(params)]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert main(["train", "--params", str(params), "--run", "one"]) == 0


def test_synthetic_is_deterministic(tmp_path):
    from dvt.config import SyntheticConfig
    from dvt.data.synthetic import generate

    a, b = generate(SyntheticConfig(train_size=30, test_size=5)), generate(SyntheticConfig(train_size=30, test_size=5))
    np.testing.assert_array_equal(a["train"][0], b["train"][0])
    assert a["train"][0].shape == (30, 28, 28, 1) and a["train"][0].dtype == np.uint8
    c = generate(SyntheticConfig(train_size=4, test_size=2, image_size=32, channels=3, classes=100, seed=1))
    assert c["test"][0].shape == (2, 32, 32, 3)


def _cifar_files(tmp_path: Path, name: str, monkeypatch) -> tuple[Path, cifar.CifarArchive]:
    rng = np.random.default_rng(1)
    archive = cifar.archives()[name]
    classes = 10 if name == "cifar10" else 100
    path = tmp_path / archive.filename
    cifar.write_cifar(path, archive, train=(random_images(rng, 50, 32, 3), rng.integers(0, classes, 50)),
                      test=(random_images(rng, 10, 32, 3), rng.integers(0, classes, 10)),
                      classes=[f"c{i}" for i in range(classes)])
    # The generated archive stands in for the real one: make its md5 the published one.
    archive = dataclasses.replace(archive, md5=cifar.md5sum(path))
    monkeypatch.setattr(cifar, "archives", lambda: {name: archive})
    return path, archive


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive(tmp_path, monkeypatch, name):
    path, archive = _cifar_files(tmp_path, name, monkeypatch)
    parsed = cifar.read_cifar(path, archive)
    x, y = parsed["train"]
    assert x.shape == (50, 32, 32, 3) and y.shape == (50,)
    config = make_config(tmp_path, data={"dataset": name, "source": str(tmp_path), "calibration_size": 5})
    manifest = fetch.run(config)
    assert manifest["counts"] == {"train": 45, "calibration": 5, "test": 10}
    assert len(manifest["classes"]) == (10 if name == "cifar10" else 100)
    # The channel-major pickle layout is undone correctly: pixel (r, c) of image i keeps its RGB.
    train = np.load(tmp_path / "data" / name / "train_images.npy")
    keep, _ = calibration_split(50, 5)
    np.testing.assert_array_equal(train, x[keep])


def test_corrupt_cifar_archive_is_refused(tmp_path, monkeypatch, capsys):
    path, _ = _cifar_files(tmp_path, "cifar10", monkeypatch)
    path.write_bytes(path.read_bytes()[:-100])
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataset: cifar10\n  source: {tmp_path}\n  root: {tmp_path / 'data'}\n"
                      "  calibration_size: 5\nmodel:\n  backbone: vit_micro\nruns:\n  a:\n    grids: [4]\n")
    for stage in ("fetch", "check"):  # the check that runs before every engine job refuses it too
        assert main([stage, "--params", str(params)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        # The user's own file: nothing of ours to delete and fetch again.
        assert len(err) == 1 and err[0].endswith("does not match the published " + cifar.archives()["cifar10"].md5
                                                 + "; the archive is corrupt or truncated: download it again"), err
    assert not (tmp_path / "data").exists()


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.utils

    def unreachable(url, root, filename=None, md5=None):
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision's does, before connecting
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", unreachable)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataset: cifar10\n  root: {tmp_path / 'data'}\n  calibration_size: 5\n")
    assert main(["fetch", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download https://www.cs.toronto.edu/" in err[0] and "Network is unreachable" \
        in err[0]
    assert not (tmp_path / "data").exists()


def write_imagenet(root: Path, *, classes: int = 1000, per_class: int = 1) -> None:
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (c % 256, i, 0)).save(folder / f"img{i}.JPEG")


def test_imagenet_folder_is_indexed_not_copied(tmp_path):
    write_imagenet(tmp_path / "ilsvrc")
    config = make_config(tmp_path, data={"dataset": "imagenet", "source": str(tmp_path / "ilsvrc"),
                                         "calibration_size": 100})
    manifest = fetch.run(config)
    assert manifest["counts"] == {"train": 900, "calibration": 100, "test": 1000}
    out = tmp_path / "data" / "imagenet"
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json", "calibration.csv", "test.csv", "train.csv"]
    test = load_split(config, "test")
    x, y = test[5]
    assert x.shape == (3, 224, 224) and y == 5
    assert len(load_split(config, "calibration")) == 100


@pytest.mark.parametrize("dataset, setup, message", [
    ("imagenet", lambda root: None, "no such folder"),
    ("imagenet", lambda root: (root / "train").mkdir(parents=True), "missing val/"),
    ("imagenet", lambda root: write_imagenet(root, classes=3), "found 3 class folders, ImageNet has 1000"),
    ("folder", lambda root: None, "no such folder"),
    ("folder", lambda root: (root / "train" / "a").mkdir(parents=True), "missing val/ or test/"),
    ("folder", lambda root: write_folder(root, classes=["only"]), "found 1 class folder; a classifier needs at least 2"),
    ("folder", lambda root: [write_folder(root, classes=["a", "b"]), (root / "val" / "c").mkdir()],
     "class folders differ from train/"),
])
def test_bad_image_trees_are_one_line_and_write_nothing(tmp_path, capsys, dataset, setup, message):
    root = tmp_path / "tree"
    setup(root)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataset: {dataset}\n  source: {root}\n  root: {tmp_path / 'data'}\n")
    assert main(["fetch", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "data").exists()


def test_empty_imagenet_and_unreadable_images(tmp_path):
    root = tmp_path / "ilsvrc"
    for split in ("train", "val"):
        for c in range(1000):
            (root / split / f"n{c:08d}").mkdir(parents=True)
    config = make_config(tmp_path, data={"dataset": "imagenet", "source": str(root), "calibration_size": 0},
                         eval={"threshold_split": "train-augmented"})
    with pytest.raises(DvtError, match="n00000000: no images"):
        fetch.run(config)
    for split in ("train", "val"):
        for c in range(1000):
            (root / split / f"n{c:08d}" / "x.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DvtError, match="unreadable image"):
        fetch.run(config)


@pytest.mark.parametrize("classes, test", [(["cat", "dog", "fish"], "val"), ([f"species_{i:02d}" for i in range(37)],
                                                                              "test")])
def test_a_folder_of_ones_own_images_is_a_dataset(tmp_path, capsys, classes, test):
    """data.dataset: folder (issue #18, item 3): any number of classes, any sizes, val/ or test/; the
    same index, manifest, calibration split and transforms as ImageNet, at data.image_size."""
    from dvt.data.info import dataset_info

    write_folder(tmp_path / "mine", classes=classes, test=test)
    config = make_config(tmp_path, data={"dataset": "folder", "source": str(tmp_path / "mine"),
                                         "calibration_size": len(classes), "image_size": 32})
    info = dataset_info(config.data)
    assert (info.num_classes, info.channels, info.image_size) == (len(classes), 3, 32)
    manifest = fetch.run(config)
    # the index keeps each image's own size; fetch says which size the model will read them at
    assert "3 channels, stored at their own sizes, read at 32x32" in capsys.readouterr().out
    n = 3 * len(classes)
    assert manifest["classes"] == sorted(classes) and manifest["format"] == "imagefolder-index"
    assert manifest["image_size"] is None  # the images keep their sizes; the loaders resize them
    assert manifest["counts"] == {"train": n - len(classes), "calibration": len(classes), "test": n}
    out = tmp_path / "data" / "folder"
    rows = (out / "test.csv").read_text().splitlines()[1:]
    assert all(r.startswith(f"{test}/") for r in rows) and len(rows) == n
    label_of = {name: i for i, name in enumerate(sorted(classes))}
    for row in rows:  # each image is labelled by its class folder
        path, label = row.rsplit(",", 1)
        assert int(label) == label_of[path.split("/")[1]]
    for split, training in (("train", True), ("test", False)):
        x, y = load_split(config, split)[0]
        assert x.shape == (3, 32, 32) and 0 <= y < len(classes), split
    # a model for it has a head per class
    from dvt.run_models import model_for_run
    model = model_for_run(make_config(tmp_path, data={"dataset": "folder", "source": str(tmp_path / "mine"),
                                                      "image_size": 32}, runs={"r": {"grids": [4]}},
                                      model={"backbone": "vit_micro"}), "r")
    assert model.num_classes == len(classes) and model.img_size == 32


def test_a_folder_tree_is_read_as_imagefolder_reads_it_less_hidden_entries(tmp_path):
    """Images in sub-folders of a class folder belong to the class (as in torchvision's ImageFolder);
    hidden folders and files (.ipynb_checkpoints, macOS's ._x.jpg) are neither classes nor images."""
    from torchvision.datasets import ImageFolder

    from dvt.data import folder

    root = tmp_path / "mine"
    write_folder(root, classes=["cat", "dog"])
    (root / "train" / "cat" / "indoor").mkdir()
    Image.new("RGB", (20, 20)).save(root / "train" / "cat" / "indoor" / "sofa.png")
    for hidden in (root / "train" / ".ipynb_checkpoints", root / "val" / ".ipynb_checkpoints",
                   root / "train" / "dog" / ".cache"):
        hidden.mkdir()
        Image.new("RGB", (20, 20)).save(hidden / "copy.png")
    (root / "train" / "dog" / "._train_0.jpg").write_bytes(b"macOS metadata")
    classes, index = folder.scan(root)
    assert classes == ["cat", "dog"]
    assert "train/cat/indoor/sofa.png" in [p for p, _ in index["train"]]
    assert not [p for split in index.values() for p, _ in split if "/." in p]
    # Apart from the hidden entries (ImageFolder even makes .ipynb_checkpoints a class), the same images
    # in the same classes as ImageFolder.
    reference = ImageFolder(str(root / "train"))
    assert reference.classes == [".ipynb_checkpoints", "cat", "dog"]
    expected = sorted((Path(p).relative_to(root).as_posix(), reference.classes[y]) for p, y in reference.samples
                      if "/." not in p)
    assert sorted((p, classes[y]) for p, y in index["train"]) == expected


def test_a_train_class_without_images_is_refused_and_the_check_sees_it_before_fetch(tmp_path):
    """An empty train class folder (a class no model can learn) was indexed silently; a tree whose val/
    classes differ from train/, or a calibration split as large as train/, is now refused by the check
    that runs before any engine job, not only by fetch."""
    from dvt.errors import ConfigError
    from dvt.stages.check import check

    root = tmp_path / "mine"
    write_folder(root, classes=["cat", "dog", "eel"])
    settings = {"runs": {"r": {"grids": [4]}}, "model": {"backbone": "vit_micro"}, "train": {"batch_size": 4}}
    config = make_config(tmp_path, data={"dataset": "folder", "source": str(root), "calibration_size": 2,
                                         "image_size": 32}, **settings)
    check(config)
    big = make_config(tmp_path, data={"dataset": "folder", "source": str(root), "calibration_size": 9,
                                      "image_size": 32}, **settings)
    with pytest.raises(ConfigError, match=r"^data.calibration_size = 9 is not allowed: the train split has 9 images"):
        check(big)
    for f in (root / "train" / "eel").iterdir():
        f.unlink()
    for refuse in (check, fetch.run):
        with pytest.raises(DvtError, match=r"train/eel: no images \(looked for .*\); every class needs training"):
            refuse(config)
    (root / "train" / "eel").rmdir()
    with pytest.raises(ConfigError, match=r"^data.source: .*val: class folders differ from train/ \(e.g. \['eel'\]\)"):
        check(config)
    # The check opens the images fetch opens (a small tree: all of them).
    (root / "val" / "eel").rename(root / "eel")
    (root / "train" / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"^data.source: .*train/dog/bad.png: unreadable image"):
        check(config)
    assert not (tmp_path / "data").exists()


def test_an_unreadable_image_outside_the_checked_sample_is_one_line_at_load(tmp_path, monkeypatch):
    """fetch opens every image of a small tree but only a sample of a large one, so the loader names a
    bad file in one line, also from a DataLoader worker (it used to end training in a PIL traceback)."""
    import functools

    from dvt.cli import _one_line
    from dvt.data import folder

    root = tmp_path / "mine"
    write_folder(root, classes=["cat", "dog"])
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    config = make_config(tmp_path, data={"dataset": "folder", "source": str(root), "calibration_size": 1,
                                         "image_size": 16})
    with pytest.raises(DvtError, match=r"broken.jpg: unreadable image"):
        fetch.run(config)
    monkeypatch.setattr(folder, "scan", functools.partial(folder.scan, check_images=0))  # as if outside the sample
    fetch.run(config)
    data = load_split(config, "train", training=False)
    bad = next(i for i, (p, _) in enumerate(data.items) if p.endswith("broken.jpg"))
    message = r"broken.jpg: unreadable image \(.*\); replace or remove it and run dvt fetch again$"
    with pytest.raises(DvtError, match=message):
        data[bad]
    loader = make_loader(torch.utils.data.Subset(data, [bad]), batch_size=1, shuffle=False, num_workers=1)
    with pytest.raises(DvtError) as err:
        next(iter(loader))
    assert "Traceback" in str(err.value)  # what a worker hands back...
    assert re.search(message, _one_line(err.value)) and "\n" not in _one_line(err.value)  # ...and what dvt prints


def test_cli_unknown_dataset_writes_nothing(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataset: mnist\n  root: {tmp_path / 'data'}\n")
    proc = subprocess.run([sys.executable, "-m", "dvt.cli", "fetch", "--params", str(params)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dvt fetch: error: data.dataset = 'mnist' is not one of "
        "'cluttered-fashion-mnist' | 'fashion-mnist' | 'cifar10' | 'cifar100' | 'imagenet' | 'folder' | 'synthetic'"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()


KILL_MIDWAY = """
import os, signal, sys
from dvt.cli import main
from dvt.stages import fetch
real = fetch.write_arrays
def write_then_die(tmp, content):
    arrays, objects = content
    real(tmp, ({"train": arrays["train"]}, objects))  # one split on disk, then SIGKILL: no cleanup runs
    os.kill(os.getpid(), signal.SIGKILL)
fetch.write_arrays = write_then_die
sys.exit(main(["fetch", "--params", sys.argv[1]]))
"""


def test_killed_fetch_leaves_no_manifest_and_rerun_completes(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataset: synthetic\n  root: {tmp_path / 'data'}\n  calibration_size: 10\n"
                      "  synthetic:\n    train_size: 60\n    test_size: 10\n")
    proc = subprocess.run([sys.executable, "-c", KILL_MIDWAY, str(params)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "data" / "synthetic" / "MANIFEST.json").exists()
    assert list((tmp_path / "data").glob(".synthetic.*.tmp"))  # the half-written folder
    assert main(["fetch", "--params", str(params)]) == 0
    assert (tmp_path / "data" / "synthetic" / "MANIFEST.json").is_file()
    assert not list((tmp_path / "data").glob(".synthetic.*.tmp"))


def test_an_up_to_date_fetch_still_sweeps_what_a_killed_one_left(tmp_path):
    """Issue #31, item 5: after a kill, a no-op rerun left a half-written folder and the whole old
    dataset moved aside until the next write."""
    from dvt.atomic import _HOST

    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataset: synthetic\n  root: {tmp_path / 'data'}\n  calibration_size: 10\n"
                      "  synthetic:\n    train_size: 60\n    test_size: 10\n")
    assert main(["fetch", "--params", str(params)]) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a writer that is gone
    for tail in ("x1y2", "old"):
        left = tmp_path / "data" / f".synthetic.{_HOST}-{pid}-{tail}.tmp"
        left.mkdir()
        (left / "train_images.npy").write_bytes(b"partial")
    assert main(["fetch", "--params", str(params)]) == 0  # up to date: nothing to write
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["synthetic"]


def test_loaders_give_normalised_batches(synthetic_config):
    import torch

    fetch.run(synthetic_config)
    splits = load_splits(synthetic_config)
    assert (len(splits.train), len(splits.calibration), len(splits.test)) == (300, 100, 100)
    torch.manual_seed(0)
    x, y = next(iter(make_loader(splits.train, batch_size=64, shuffle=True)))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Evaluation batches are deterministic and equal to the per-item path.
    xb, yb = next(iter(make_loader(splits.test, batch_size=4, shuffle=False)))
    assert torch.equal(xb[2], splits.test[2][0]) and int(yb[2]) == splits.test[2][1]
    assert abs(float(xb.mean())) < 1.0


SCALES = {"small_share": 0.3, "small_scale": (8, 12), "large_scale": (20, 30)}


def _cluttered_config(tmp_path: Path, **cluttered) -> object:
    return make_config(tmp_path, data={"dataset": "cluttered-fashion-mnist", "source": str(tmp_path / "raw"),
                                       "calibration_size": 20,
                                       "cluttered": {"canvas": 40, **SCALES, **cluttered}})


def test_cluttered_items_sit_at_their_recorded_boxes(tmp_path):
    """Without clutter the canvas is black except the item, resized alone to its recorded side."""
    import torch
    import torch.nn.functional as F

    from dvt.config import ClutteredConfig
    from dvt.data import cluttered

    items = random_images(np.random.default_rng(0), 40, 28, 1)[..., 0]
    images, objects = cluttered.compose(items, ClutteredConfig(canvas=40, **SCALES, clutter=0),
                                        stream=1)
    assert images.shape == (40, 40, 40) and objects.shape == (40, 3)
    assert len(set(objects[:, 0].tolist())) > 5  # the scale really varies, and both kinds occur
    assert 0 < (objects[:, 0] <= 12).sum() < 40
    for i, (side, top, left) in enumerate(objects.tolist()):
        assert (8 <= side <= 12 or 20 <= side <= 30) and 0 <= top <= 40 - side and 0 <= left <= 40 - side
        one = F.interpolate(torch.from_numpy(items[i]).float()[None, None], size=(side, side), mode="bilinear",
                            antialias=True, align_corners=False)[0, 0].round().clamp(0, 255).byte().numpy()
        expected = np.zeros((40, 40), np.uint8)
        expected[top:top + side, left:left + side] = one
        np.testing.assert_array_equal(images[i], expected)
    # Clutter only adds: every pixel is at least the clutter-free one, and some are brighter.
    busy, busy_objects = cluttered.compose(items, ClutteredConfig(canvas=40, **SCALES, clutter=3),
                                           stream=1)
    np.testing.assert_array_equal(busy_objects, objects)
    assert (busy >= images).all() and (busy > images).any()


def test_cluttered_fashion_mnist_fetch_is_deterministic_and_keeps_boxes_with_images(tmp_path, capsys):
    raw = write_fashion(tmp_path / "raw", np.random.default_rng(0))
    config = _cluttered_config(tmp_path)
    manifest = fetch.run(config)
    out = tmp_path / "data" / "cluttered-fashion-mnist"
    assert manifest["counts"] == {"train": 100, "calibration": 20, "test": 30}
    assert (manifest["image_size"], manifest["channels"]) == (40, 1)
    assert manifest["params"]["cluttered"]["version"] >= 1
    assert {f"{s}_objects.npy" for s in ("train", "calibration", "test")} <= set(manifest["files"])
    # The raw IDX files it was composed from are named with their checksums.
    from dvt.data.manifest import sha256

    assert manifest["source_files"] == {f: f"sha256:{sha256(tmp_path / 'raw' / f)}"
                                        for fs in FASHION_FILES.values() for f in fs}
    first = {name: (out / name).read_bytes() for name in manifest["files"]}
    # The calibration images are the train rows the split names, with their boxes.
    from dvt.config import ClutteredConfig
    from dvt.data import cluttered

    images, objects = cluttered.compose(raw["train"], ClutteredConfig(canvas=40, **SCALES),
                                        stream=1)
    _, held = calibration_split(120, 20)
    np.testing.assert_array_equal(np.load(out / "calibration_images.npy")[..., 0], images[held])
    np.testing.assert_array_equal(np.load(out / "calibration_objects.npy"), objects[held])
    # Fetched again from scratch: the same bytes. A changed derivation param refetches.
    import shutil

    shutil.rmtree(out)
    fetch.run(config)
    assert {name: (out / name).read_bytes() for name in manifest["files"]} == first
    assert load_split(config, "test")[0][0].shape == (1, 40, 40)
    other = _cluttered_config(tmp_path, clutter=0)
    with pytest.raises(DvtError, match="run `dvt fetch` again"):
        load_split(other, "train")
    assert fetch.run(other)["params"]["cluttered"]["clutter"] == 0


@pytest.mark.parametrize("bad, message", [
    ({"small_scale": [12, 8]}, "data.cluttered.small_scale = [12, 8] is not allowed"),
    ({"large_scale": [20, 50]}, "data.cluttered.large_scale = [20, 50] is not allowed: [lowest, highest] side"),
    ({"large_scale": [20]}, "data.cluttered.large_scale = [20] is not allowed"),
    ({"small_share": 1.5}, "data.cluttered.small_share = 1.5 is not allowed"),
    ({"fragment": 29}, "data.cluttered.fragment = 29 is not allowed"),
    ({"clutter": -1}, "data.cluttered.clutter = -1 is not allowed"),
])
def test_cluttered_params_are_checked_when_loaded(tmp_path, bad, message):
    with pytest.raises(DvtError) as err:
        _cluttered_config(tmp_path, **bad)
    assert message in str(err.value)
