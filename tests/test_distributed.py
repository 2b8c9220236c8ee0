"""`dvt train --processes N`: one process's global batches, its weights up to float rounding, resume
after a kill, and refusals in one line. CPU only: torchrun's processes talk over gloo.

The processes that torchrun starts are other interpreters, so what a test changes in them comes from a
sitecustomize.py on their PYTHONPATH (`hooks`): no random crop or flip (the one random draw left in
training, as drop-path is off), so that one and two processes train the same model up to float
rounding; and, when asked, a kill -9 of the whole run right after its first resume.pt.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from dvt import checkpoint
from dvt.cli import main
from dvt.config import load_config
from dvt.data import loading
from dvt.data.loading import make_loader
from dvt.data.shards import ShardedBatches
from dvt.errors import DvtError
from dvt.lock import exclusive
from dvt.run_models import model_for_run
from dvt.stages import fetch
from dvt.stages.train import run as train
from tests.helpers import write_params_file

PARAMS = {
    "data": {"dataset": "synthetic", "calibration_size": 64,
             "synthetic": {"train_size": 320, "test_size": 64, "image_size": 16}},
    "model": {"backbone": "vit_micro", "drop_path": 0.0},
    "runs": {"dvt": {"grids": [2, 4]}},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.003, "warmup_epochs": 1, "threads": 1},
    "eval": {"batch_size": 128},
}
SEED = "seed42"

HOOKS = '''
import os

import dvt.data.loading

dvt.data.loading.random_crop_flip = lambda x: x

if os.environ.get("DVT_TEST_KILL_AFTER_EPOCH"):
    import signal

    from dvt import checkpoint

    save = checkpoint.save

    def save_then_kill(path, payload):
        save(path, payload)
        if str(path).endswith("resume.pt") and payload["epoch"] == int(os.environ["DVT_TEST_KILL_AFTER_EPOCH"]):
            os.kill(os.getppid(), signal.SIGKILL)  # the launcher: its processes go with it

    checkpoint.save = save_then_kill
'''


def write_params(root: Path, **changes) -> Path:
    path = write_params_file(root, PARAMS, **changes)
    fetch.run(load_config(path))
    return path


def train_args(params: Path, *more: str) -> list[str]:
    return ["train", "--params", str(params), "--run", "dvt", *more]


def final(root: Path) -> dict:
    return checkpoint.load(root / "runs" / "dvt" / SEED / "checkpoint.pt")


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> dict[str, str]:
    """The environment of processes that get the hooks (no crop or flip; kill on request)."""
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(HOOKS)
    return {"PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, hooks) -> Path:
    """An uninterrupted `dvt train --processes 2` of the tiny run."""
    root = tmp_path_factory.mktemp("two")
    params = write_params(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", hooks["PYTHONPATH"])
        assert main(train_args(params, "--processes", "2")) == 0
    return root


@pytest.fixture(scope="module")
def killed(tmp_path_factory, hooks) -> Path:
    """`dvt train --processes 2` killed with -9 (launcher and processes) right after its first epoch."""
    root = tmp_path_factory.mktemp("killed")
    params = write_params(root)
    proc = subprocess.run([sys.executable, "-m", "dvt.cli", *train_args(params, "--processes", "2")],
                          env={**os.environ, **hooks, "DVT_TEST_KILL_AFTER_EPOCH": "1"}, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return root


class Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@pytest.mark.parametrize("num_workers", [0, 1])  # 1: a persistent worker, whose seed is drawn only once
@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_gets_its_slice_of_the_one_process_batches(num_workers, world):
    data, batch, seed = Indices(50), 8, 7  # 6 batches an epoch; drop_last leaves 2 indices out
    one_gen = torch.Generator().manual_seed(seed)
    one = make_loader(data, batch_size=batch, shuffle=True, generator=one_gen, num_workers=num_workers,
                      drop_last=True)
    gens = [torch.Generator().manual_seed(seed) for _ in range(world)]
    ranks = [make_loader(data, batch_sampler=ShardedBatches(data, batch_size=batch, generator=g, rank=r, world=world),
                         generator=g, num_workers=num_workers) for r, g in enumerate(gens)]
    assert [len(loader) for loader in ranks] == [len(one)] * world == [6] * world
    epochs = []
    for _ in range(2):
        steps = list(zip(one, *ranks, strict=True))
        for single, *slices in steps:
            assert [len(s) for s in slices] == [batch // world] * world
            assert torch.equal(torch.cat(slices), single)  # rank r holds the r-th slice, in order
        epochs.append([single.tolist() for single, *_ in steps])
        # The same draws in the same order: every generator ends the epoch where the one-process one does.
        assert all(torch.equal(g.get_state(), one_gen.get_state()) for g in gens)
    assert epochs[0] != epochs[1]  # a new order each epoch


@pytest.mark.slow
def test_two_processes_train_the_one_process_model(two_processes, tmp_path, monkeypatch):
    """Measured (CPU, torch 2.14.1, 3 epochs of 8 steps): calibration logits within 5e-7 of each other
    (the smallest top-1/top-2 margin is 6e-3), the same top-1 at both exits, losses within 2e-8 relative.
    The weights differ by 2e-9 (median) and up to 1.4e-3 in the attention's key bias only: softmax
    ignores it, so its gradient is rounding noise, which AdamW scales to whole steps either way.
    Allowed: logits 1e-4 (200x), losses 1e-6 relative, top-1 one image (1.6 points) apart."""
    monkeypatch.setattr(loading, "random_crop_flip", lambda x: x)  # as the hooks do in the processes
    config = load_config(write_params(tmp_path))
    train(config, run="dvt")
    one, two = final(tmp_path), final(two_processes)
    for a, b in zip(one["log"], two["log"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        for k in (1, 2):
            assert abs(a[f"top1_exit{k}"] - b[f"top1_exit{k}"]) <= 100 / 64 + 1e-9
    cal = loading.load_split(config, "calibration")
    x = torch.stack([cal[i][0] for i in range(len(cal))])
    logits = []
    for state in (one, two):
        model = model_for_run(config, "dvt")
        model.load_state_dict(state["model"])
        with torch.no_grad():
            logits.append(model.eval()(x))
    for a, b in zip(*logits, strict=True):
        assert (a - b).abs().max() < 1e-4
    summary = (two_processes / "runs" / "dvt" / SEED / "train.json").read_text()
    assert '"processes": 2' in summary
    # The process count is no setting of the weights: it is not in the fingerprint, so no retrain.
    assert one["config"] == two["config"]


def _wait_until_free(folder: Path, timeout: float = 30) -> None:
    """The kill -9 took the processes too: rank 0's lock goes when it does."""
    deadline = time.time() + timeout
    while True:
        try:
            with exclusive(folder, "train"):
                return
        except DvtError:
            assert time.time() < deadline, "a process of the killed run still holds the lock"
            time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(two_processes, killed, tmp_path,
                                                                        hooks, monkeypatch, capfd):
    folder = killed / "runs" / "dvt" / SEED
    resume = checkpoint.load(folder / "resume.pt")
    assert resume["epoch"] == 1 and len(resume["rng_per_rank"]) == 2 and not (folder / "checkpoint.pt").exists()
    _wait_until_free(folder)
    # Run where the killed one left off (a copy: another test resumes it with one process).
    params = write_params(tmp_path)
    (tmp_path / "runs" / "dvt" / SEED).mkdir(parents=True)
    shutil.copy(folder / "resume.pt", tmp_path / "runs" / "dvt" / SEED / "resume.pt")
    monkeypatch.setenv("PYTHONPATH", hooks["PYTHONPATH"])
    capfd.readouterr()
    # Every process refuses other settings: the launcher prints the line once.
    assert main(train_args(params, "--processes", "2", "--set", "train.lr=0.01")) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume.pt was trained with other settings (train.lr: 0.003" in err[0], err
    assert main(train_args(params, "--processes", "2")) == 0
    out = capfd.readouterr().out
    assert "resuming after epoch 1 of 3" in out and "note" not in out
    a, b = final(two_processes), final(tmp_path)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]


@pytest.mark.slow
def test_a_two_process_resume_state_resumes_in_one_process(two_processes, killed, tmp_path, monkeypatch, capsys):
    """The global batches do not depend on the process count, so neither does resuming (with a note)."""
    monkeypatch.setattr(loading, "random_crop_flip", lambda x: x)
    config = load_config(write_params(tmp_path))
    (tmp_path / "runs" / "dvt" / SEED).mkdir(parents=True)
    shutil.copy(killed / "runs" / "dvt" / SEED / "resume.pt", tmp_path / "runs" / "dvt" / SEED / "resume.pt")
    train(config, run="dvt")
    assert "resume.pt was written by 2 processes, this run has 1" in capsys.readouterr().out
    a, b = final(two_processes), final(tmp_path)
    assert [r["loss"] for r in b["log"]] == pytest.approx([r["loss"] for r in a["log"]], rel=1e-6)


@pytest.mark.slow
def test_a_second_trainer_with_processes_is_refused_in_one_line(tmp_path, capfd):
    params = write_params(tmp_path, train__epochs=1, train__warmup_epochs=0)
    folder = tmp_path / "runs" / "dvt" / SEED
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dvt.lock import exclusive\n"
                               "with exclusive(sys.argv[1], 'train'):\n print('held', flush=True); time.sleep(600)",
                               str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capfd.readouterr()
        assert main(train_args(params, "--processes", "2")) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is busy: another `dvt train` is working on it" in err[0], err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert sorted(p.name for p in folder.iterdir()) == [".train.lock"]


@pytest.mark.parametrize("args, env, message", [
    (["--processes", "0"], {}, "--processes 0 is not allowed: must be a whole number >= 1"),
    (["--processes=-2"], {}, "--processes -2 is not allowed: must be a whole number >= 1"),
    (["--processes", "two"], {}, "--processes two is not allowed: must be a whole number >= 1"),
    (["--processes", "1.5"], {}, "--processes 1.5 is not allowed: must be a whole number >= 1"),
    (["--processes", "3"], {}, "train.batch_size = 32 does not split evenly over 3 processes"),
    (["--processes", "3"], {"WORLD_SIZE": "2"}, "--processes 3 under torchrun with 2 processes (WORLD_SIZE)"),
])
def test_bad_processes(tmp_path, monkeypatch, capsys, args, env, message):
    params = write_params(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert main(train_args(params, *args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()
