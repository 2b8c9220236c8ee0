"""`dvt train`: outputs, determinism, resume after kill -9, DDP, fine-tuning, and refusals."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dvt import checkpoint
from dvt.cli import main
from dvt.config import load_config
from dvt.errors import DvtError
from dvt.stages import fetch
from dvt.stages.train import run as train
from tests.helpers import write_params_file

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow

PARAMS = {
    "data": {"dataset": "synthetic", "calibration_size": 64,
             "synthetic": {"train_size": 320, "test_size": 64, "image_size": 16}},
    "model": {"backbone": "vit_micro", "drop_path": 0.1},
    "runs": {"dvt": {"grids": [2, 4]}, "single": {"grids": [4]}},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.003, "warmup_epochs": 1, "threads": 1},
    "eval": {"batch_size": 128},
}


def write_params(tmp_path: Path, **changes) -> Path:
    path = write_params_file(tmp_path, PARAMS, **changes)
    fetch.run(load_config(path))
    return path


def final_state(tmp_path: Path, run: str = "dvt") -> dict:
    return checkpoint.load(tmp_path / "runs" / run / "seed42" / "checkpoint.pt")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_writes_outputs_and_is_deterministic(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for i, root in enumerate((one, two)):
        root.mkdir()
        # As if in a fresh process: the global generators start anywhere (checkpoint.pt keeps their states).
        random.seed(i)
        np.random.seed(i + 10)
        torch.manual_seed(i + 20)
        summary = train(load_config(write_params(root)), run="dvt")
    assert summary["epochs"] == 3 and set(summary["top1"]) == {"exit1", "exit2"}
    log = (one / "runs" / "dvt" / "seed42" / "train_log.csv").read_text().splitlines()
    assert log[0].split(",")[:6] == ["epoch", "lr", "loss_exit1", "loss_exit2", "loss", "top1_exit1"]
    assert len(log) == 4
    a, b = final_state(one), final_state(two)
    assert_same_weights(a["model"], b["model"])
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]
    # The loss falls while training: the model learns the synthetic classes.
    assert a["log"][-1]["loss"] < a["log"][0]["loss"]
    assert a["config"] == checkpoint.run_fingerprint(load_config(one / "params.yaml"), "dvt")
    # Wall-clock times are in the log, not in the checkpoint: retraining bit for bit gives the same
    # file, so the stages that depend on its hash do not rerun (issue #15, item 6).
    assert "seconds" in log[0].split(",") and "timings" not in a and "seconds" not in a["log"][0]
    assert checkpoint.sha256(one / "runs" / "dvt" / "seed42" / "checkpoint.pt") == \
        checkpoint.sha256(two / "runs" / "dvt" / "seed42" / "checkpoint.pt")


def test_finished_run_is_a_noop(tmp_path, capsys):
    config = load_config(write_params(tmp_path, train__epochs=2, train__subset=200, train__ema_decay=0.9))
    first = train(config, run="single")
    assert first["images_per_second"] > 0
    folder = tmp_path / "runs" / "single" / "seed42"
    before = _tree(folder, mtime=True)
    assert set(before) == {"checkpoint.pt", "train.json", "train_log.csv", ".train.lock", "live/metrics.json",
                           *(f"live/plots/metrics/{name}.tsv" for name in ("training/lr", "training/loss", "training/loss_exit1",
                                                                          "calibration/top1_exit1"))}
    # Nothing is rewritten: a train.json without its ema and processes keys made DVC retrain (#15, 3).
    # What a killed writer left is swept, though (issue #31, item 5).
    from dvt.atomic import _HOST

    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True).stdout)
    (folder / f".checkpoint.pt.{_HOST}-{pid}-k1ll.tmp").write_bytes(b"partial")
    again = train(config, run="single")
    assert "nothing to do" in capsys.readouterr().out
    assert _tree(folder, mtime=True) == before
    # DVCLive's files hold what train_log.csv holds, but the wall-clock times; a deleted live/ comes back
    # byte for byte from the checkpoint.
    log = pd.read_csv(folder / "train_log.csv")
    summary = json.loads((folder / "live" / "metrics.json").read_text())
    assert summary == {"step": 2, "training": {"lr": pytest.approx(log.lr.iloc[-1], rel=1e-5),
                                            "loss_exit1": pytest.approx(log.loss_exit1.iloc[-1], rel=1e-5),
                                            "loss": pytest.approx(log.loss.iloc[-1], rel=1e-5)},
                       "calibration": {"top1_exit1": pytest.approx(log.top1_exit1.iloc[-1], rel=1e-5)}}
    shutil.rmtree(folder / "live")
    train(config, run="single")
    assert {k: v[0] for k, v in _tree(folder).items() if k.startswith("live/")} == \
        {k: v[0] for k, v in before.items() if k.startswith("live/")}
    assert (folder / "train_log.csv").read_bytes() == before["train_log.csv"][0]  # its timings kept
    assert again.keys() == first.keys() and again["ema"] is True and again["processes"] == 1
    # A deleted summary comes back with the same keys (the times are not in the checkpoint).
    (folder / "train.json").unlink()
    train(config, run="single")
    rebuilt = json.loads((folder / "train.json").read_text())
    assert rebuilt.keys() == first.keys() and rebuilt["top1"] == first["top1"] and rebuilt["seconds_per_epoch"] is None


def test_a_finished_run_on_a_read_only_folder_is_a_noop(tmp_path, capsys, monkeypatch):
    """Issue #31: `dvt train` on a finished run opened its lock file for writing, an OSError traceback in
    a read-only folder. (Root writes through file modes, so the read-only file system is simulated at
    the one open that writes: appending to the lock file.)"""
    import builtins
    import errno

    config = load_config(write_params(tmp_path, train__epochs=2, train__subset=64))
    train(config, run="single")
    folder = tmp_path / "runs" / "single" / "seed42"
    before = _tree(folder, mtime=True)

    def read_only(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "aw+x"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr("dvt.lock.open", read_only, raising=False)
    capsys.readouterr()
    assert main(["train", "--params", str(tmp_path / "params.yaml"), "--run", "single"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _tree(folder, mtime=True) == before
    # A run never trained has no lock file to read: one line, and nothing left behind.
    assert main(["train", "--params", str(tmp_path / "params.yaml"), "--run", "dvt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create .train.lock (Read-only file system); is the folder read-only?" in err[0]
    assert not (tmp_path / "runs" / "dvt").exists()


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=1000", "train.batch_size = 1000 is larger than the train split"),
    ("runs.single.grids=[5]", "grid"),
    ("model.backbone=vit_nope", "unknown backbone 'vit_nope'"),
])
def test_a_refused_restart_keeps_the_trained_run(tmp_path, capsys, override, message):
    """--restart with a setting that is then refused used to delete the checkpoint first (#15, item 1)."""
    params = write_params(tmp_path, train__epochs=1, train__warmup_epochs=0, train__subset=64)
    assert main(["train", "--params", str(params), "--run", "single"]) == 0
    folder = tmp_path / "runs" / "single" / "seed42"
    before = _tree(folder)
    capsys.readouterr()
    assert main(["train", "--params", str(params), "--run", "single", "--set", override, "--restart"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert _tree(folder) == before


def _tree(folder: Path, *, mtime: bool = False) -> dict[str, tuple]:
    """Every file under `folder` (relative path -> bytes, and the modification time if asked)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns if mtime else None)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_kill_9_mid_training_then_resume_matches_uninterrupted(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir(), killed.mkdir()
    train(load_config(write_params(reference)), run="dvt")
    params = write_params(killed)
    ckpt = killed / "runs" / "dvt" / "seed42" / "resume.pt"
    proc = subprocess.Popen([sys.executable, "-m", "dvt.cli", "train", "--params", str(params), "--run", "dvt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # somewhere in epoch 2 (after the first checkpoint)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.load(ckpt)["epoch"] < 3
    assert not (killed / "runs" / "dvt" / "seed42" / "checkpoint.pt").exists()  # only a finished run has one
    assert main(["train", "--params", str(params), "--run", "dvt"]) == 0
    assert not ckpt.exists()
    a, b = final_state(reference), final_state(killed)
    assert_same_weights(a["model"], b["model"])
    # and the same bytes (issue #31): dvc.lock and the logits' checkpoint sha do not change after a resume
    assert (killed / "runs" / "dvt" / "seed42" / "checkpoint.pt").read_bytes() == \
        (reference / "runs" / "dvt" / "seed42" / "checkpoint.pt").read_bytes()
    assert [(r["loss"], r["top1_exit2"]) for r in a["log"]] == [(r["loss"], r["top1_exit2"]) for r in b["log"]]
    # the resumed run's DVCLive history holds every epoch once, as the uninterrupted run's does
    live = [_tree(root / "runs" / "dvt" / "seed42" / "live") for root in (reference, killed)]
    assert live[0] == live[1] and len(live[0]) == 7  # metrics.json, lr, loss and (loss, top-1) for each of 2 exits


def test_other_settings_are_refused_and_nothing_is_overwritten(tmp_path, capsys):
    params = write_params(tmp_path, train__epochs=2)
    assert main(["train", "--params", str(params), "--run", "single"]) == 0
    ckpt = tmp_path / "runs" / "single" / "seed42" / "checkpoint.pt"
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert main(["train", "--params", str(params), "--run", "single", "--set", "train.lr=0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr: 0.003 in the checkpoint, 0.01 now" in err[0] and "delete it" in err[0]
    assert ckpt.read_bytes() == before
    # The engines pass --restart: they rerun train exactly when a setting changed.
    assert main(["train", "--params", str(params), "--run", "single", "--set", "train.lr=0.01", "--restart"]) == 0
    assert checkpoint.load(ckpt)["config"]["train"]["lr"] == 0.01


@pytest.mark.parametrize("override, message", [
    ("train.lr=0", "train.lr = 0.0 is not allowed: must be > 0"),
    ("train.lr=-1e-3", "train.lr = -0.001 is not allowed: must be > 0"),
    ("train.epochs=0", "train.epochs = 0 is not allowed: must be >= 1"),
    ("train.batch_size=1000", "train.batch_size = 1000 is larger than the train split (256 images)"),
])
def test_bad_training_input(tmp_path, capsys, override, message):
    params = write_params(tmp_path)
    assert main(["train", "--params", str(params), "--run", "dvt", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_nan_loss_stops_naming_the_exit_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    config = load_config(write_params(tmp_path))
    from dvt.models.cascade import Cascade

    real_forward = Cascade.forward
    calls = {"n": 0}

    def poisoned(self, x):
        outputs = real_forward(self, x)
        calls["n"] += 1
        if self.training and calls["n"] > 10:  # epoch 1 has 8 steps: poison epoch 2
            outputs[1] = outputs[1] * float("nan")
        return outputs

    monkeypatch.setattr(Cascade, "forward", poisoned)
    with pytest.raises(DvtError, match=r"loss of exit 2 \(grid 4x4\) became nan at epoch 2.*epoch 1\) is kept"):
        train(config, run="dvt")
    assert checkpoint.load(tmp_path / "runs" / "dvt" / "seed42" / "resume.pt")["epoch"] == 1
    assert not (tmp_path / "runs" / "dvt" / "seed42" / "checkpoint.pt").exists()


def test_fine_tuning_from_a_checkpoint_with_another_class_count(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    train(load_config(write_params(source, train__epochs=2)), run="dvt")
    target = tmp_path / "target"
    target.mkdir()
    params = write_params(target, data__synthetic__classes=5, train__epochs=2, train__optimizer="sgd",
                          train__lr=0.01, train__backbone_lr_scale=0.1,
                          runs={"ft": {"grids": [2, 4],
                                       "init": str(source / "runs" / "dvt" / "seed42" / "checkpoint.pt")}})
    summary = train(load_config(params), run="ft")
    assert summary["epochs"] == 2
    tuned = final_state(target, "ft")["model"]
    assert tuned["exits.0.head.weight"].shape[0] == 5


def test_torchrun_two_processes(tmp_path):
    params = write_params(tmp_path, train__epochs=2)
    single = tmp_path / "single"
    single.mkdir()
    train(load_config(write_params(single, train__epochs=2)), run="dvt")
    # `--` ends torchrun's own options: otherwise it reads our --run as an abbreviation of its --run-path.
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "dvt.cli", "--", "train", "--params", str(params),
                           "--run", "dvt"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp, one = final_state(tmp_path)["log"], final_state(single)["log"]
    assert len(ddp) == 2
    # The same global batches (tests/test_distributed.py), but process 1 draws its own random crops.
    assert abs(ddp[-1]["loss"] - one[-1]["loss"]) < 0.5


def test_stale_resume_state_from_other_settings_is_refused_then_dropped_by_restart(tmp_path, capsys):
    params = write_params(tmp_path, train__epochs=2)
    folder = tmp_path / "runs" / "single" / "seed42"
    assert main(["train", "--params", str(params), "--run", "single"]) == 0
    (folder / "checkpoint.pt").replace(folder / "resume.pt")  # as if killed before the last rename
    capsys.readouterr()
    assert main(["train", "--params", str(params), "--run", "single", "--set", "train.lr=0.01"]) == 2
    assert "resume.pt was trained with other settings" in capsys.readouterr().err
    assert main(["train", "--params", str(params), "--run", "single", "--set", "train.lr=0.01", "--restart"]) == 0
    assert not (folder / "resume.pt").exists()  # the run with the new settings replaced it, then finished
    assert checkpoint.load(folder / "checkpoint.pt")["config"]["train"]["lr"] == 0.01


def test_a_second_trainer_of_the_same_run_refuses_while_the_first_holds_it(tmp_path, capsys):
    """Two `dvt train` of one run used to both exit 0, the last to finish silently winning (#15, 4)."""
    params = write_params(tmp_path, train__epochs=1, train__warmup_epochs=0, train__subset=64)
    folder = tmp_path / "runs" / "single" / "seed42"
    # A process holding the run's lock as a trainer does, until it is killed.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dvt.lock import exclusive\n"
                               "with exclusive(sys.argv[1], 'train'):\n print('held', flush=True); time.sleep(600)",
                               str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "--params", str(params), "--run", "single", "--set", "train.lr=0.01"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is busy: another `dvt train` is working on it" in err[0]
        assert sorted(p.name for p in folder.iterdir()) == [".train.lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The lock of a killed trainer does not block the next one.
    assert main(["train", "--params", str(params), "--run", "single"]) == 0
    assert (folder / "checkpoint.pt").is_file()


@pytest.mark.parametrize("stop_after", [1, 3])
def test_a_run_stopped_after_any_epoch_resumes_to_the_same_checkpoint_bytes(tmp_path, monkeypatch, stop_after):
    """Stopped right after an epoch's resume.pt (after the last one: before checkpoint.pt was written), the
    rerun ends with the checkpoint of an uninterrupted run, byte for byte (issue #31, item 5)."""
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    reference.mkdir(), stopped.mkdir()
    train(load_config(write_params(reference)), run="dvt")
    config = load_config(write_params(stopped))
    real, saves = checkpoint.save, []

    def save_then_stop(path, payload):
        real(path, payload)
        saves.append(path)
        if len(saves) == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(config, run="dvt")
    monkeypatch.setattr(checkpoint, "save", real)
    assert checkpoint.load(stopped / "runs" / "dvt" / "seed42" / "resume.pt")["epoch"] == stop_after
    train(config, run="dvt")
    assert (stopped / "runs" / "dvt" / "seed42" / "checkpoint.pt").read_bytes() == \
        (reference / "runs" / "dvt" / "seed42" / "checkpoint.pt").read_bytes()
    assert not (stopped / "runs" / "dvt" / "seed42" / "resume.pt").exists()
