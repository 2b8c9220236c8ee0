"""Issue #31, item 1: a damaged checkpoint is never used as if it were the trained one.

`dvt train` records the checkpoint's sha256 in train.json; every stage that reads the weights
(collect, budget, policies, speed, predict, and train's own "already trained") checks the file
against it and refuses a damaged one in one line, writing nothing. `dvt check --verify` hashes every
checkpoint against that record and every DVC output against dvc.lock (tests/test_pipeline_runs.py
runs it on a DVC-built pipeline whose cache object was damaged).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dvt.cli import main
from dvt.config import load_config
from tests.helpers import copy_pipeline, flip_a_weight_bit

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(finished_pipeline, tmp_path_factory) -> Path:
    return copy_pipeline(finished_pipeline, tmp_path_factory.mktemp("integrity"))


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_records_the_sha256_of_the_checkpoint_it_wrote(finished):
    config = load_config(finished)
    for run in ("dvt", "single"):
        folder = config.run_dir(run)
        recorded = json.loads((folder / "train.json").read_text())["checkpoint_sha256"]
        assert recorded == hashlib.sha256((folder / "checkpoint.pt").read_bytes()).hexdigest()


def test_a_damaged_checkpoint_is_refused_by_every_stage_that_reads_it(finished, tmp_path, capsys):
    import torch

    config = load_config(finished)
    ckpt = config.run_dir("dvt") / "checkpoint.pt"
    good = ckpt.read_bytes()
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(image)
    try:
        flip_a_weight_bit(ckpt)
        torch.load(ckpt, map_location="cpu", weights_only=False)  # loads: nothing else would notice
        before = hashes(Path(config.runs_dir))
        for argv in (["collect", "--run", "dvt"], ["budget", "--run", "dvt"], ["policies", "--run", "dvt"],
                     ["speed", "--run", "dvt"], ["train", "--run", "dvt"], ["predict", "--run", "dvt", str(image)]):
            capsys.readouterr()
            assert main([argv[0], "--params", str(finished), *argv[1:]]) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"dvt {argv[0]}: error: {ckpt} is damaged: its sha256 "), err
            assert f"train recorded in {ckpt.parent / 'train.json'}" in err[0]
            assert hashes(Path(config.runs_dir)) == before, argv
        # `dvt check --verify` names it, says what to do, and exits 2.
        capsys.readouterr()
        assert main(["check", "--params", str(finished), "--verify"]) == 2
        err = capsys.readouterr().err
        assert f"damaged: {ckpt}: not the checkpoint train recorded" in err and "--restart" in err
        assert "1 damaged (above) of 2 checkpoints" in err
    finally:
        ckpt.write_bytes(good)
    capsys.readouterr()
    assert main(["check", "--params", str(finished), "--verify"]) == 0
    assert "2 checkpoints match train's records" in capsys.readouterr().out


def test_the_same_checkpoint_content_is_the_same_bytes_whatever_its_objects_history(tmp_path):
    """A resumed run holds loaded copies where an uninterrupted one holds shared objects; pickle would write
    the two differently (issue #31, 3 of 7 resumes). checkpoint.save writes the content, not the history."""
    import torch
    from torch import nn

    from dvt import checkpoint

    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    betas = (0.9, 0.999)
    shared = {"model": model.state_dict(), "groups": [{"lr": 0.1, "betas": betas}, {"lr": 0.1, "betas": betas}],
              "log": [{"epoch": 1, "loss_exit1": 2.0}, {"epoch": 2, "loss_exit1": 1.5}]}
    buffer = tmp_path / "a.pt"
    torch.save(shared, buffer)
    loaded = torch.load(buffer, weights_only=False)  # equal content, other objects and sharing
    loaded["groups"][1]["betas"] = tuple(list(loaded["groups"][1]["betas"]))  # a new, unshared tuple
    loaded["log"][1] = {"".join(list(k)): v for k, v in loaded["log"][1].items()}  # new, unshared keys
    raw = [tmp_path / "raw1.pt", tmp_path / "raw2.pt"]
    for obj, path in zip((shared, loaded), raw):
        with open(path, "wb") as handle:
            torch.save(obj, handle)
    assert raw[0].read_bytes() != raw[1].read_bytes()  # what plain torch.save does
    ours = [tmp_path / "ours1.pt", tmp_path / "ours2.pt"]
    for obj, path in zip((shared, loaded), ours):
        checkpoint.save(path, obj)
    assert ours[0].read_bytes() == ours[1].read_bytes()
    back = checkpoint.load(ours[0])
    assert back["model"]._metadata == model.state_dict()._metadata  # module versions kept
    assert all(torch.equal(back["model"][k], v) for k, v in model.state_dict().items())
    assert back["groups"] == shared["groups"] and back["log"] == shared["log"]


@pytest.mark.parametrize("code", ["EROFS", "EACCES"])
def test_a_read_only_folder_is_one_line_and_changes_nothing(finished, tmp_path, capsys, monkeypatch, code):
    """Issue #31, item 4: a read-only file system (EROFS) or a folder without write permission (EACCES, what
    a user who is not root meets after chmod) while a stage writes: one line naming the path, nothing
    changed. (Root writes through file modes, so the failure is injected where every writer starts.)"""
    import errno
    import tempfile

    from dvt import atomic

    root = finished.parent
    before = hashes(root)

    def refused(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refused)
    capsys.readouterr()
    for stage in (["budget", "--run", "dvt"], ["flops", "--run", "single"], ["policies", "--run", "dvt"]):
        assert main([stage[0], "--params", str(finished), *stage[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot be written" in err[0] and "make the folder writable" in err[0], err
    assert hashes(root) == before
    assert tempfile.mkstemp is refused  # (the patch was in place for every stage)
