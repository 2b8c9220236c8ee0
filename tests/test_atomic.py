"""Atomic writes survive kills: a half-done folder swap is undone or finished, dead writers' temps go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvt import atomic
from dvt.atomic import atomic_dir, atomic_path, sweep, write_text


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def folder(path: Path, **files: str) -> None:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)


def test_a_kill_between_old_aside_and_new_in_is_undone(tmp_path, monkeypatch):
    """The swap used to delete the old folder before renaming the new one in: a kill in between left a
    dataset folder with 5 of 7 files (issue #15, item 5)."""
    target = tmp_path / "data"
    folder(target, a="old a", b="old b")
    real = os.replace

    def killed_after_first_rename(src, dst):
        real(src, dst)
        if Path(dst).name.endswith("-old.tmp"):
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs
    monkeypatch.setattr(atomic.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "a").write_text("new a")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not target.exists()
    # The process that was killed is gone: make the leftovers look like a dead writer's.
    pid = str(dead_pid())
    for p in tmp_path.glob(".data.*.tmp"):
        p.rename(p.with_name(p.name.replace(f"-{os.getpid()}-", f"-{pid}-")))
    sweep(target)
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": "old a", "b": "old b"}
    assert not list(tmp_path.glob(".data.*"))


def test_a_kill_after_new_in_leaves_the_new_folder_and_the_old_one_goes(tmp_path):
    target = tmp_path / "data"
    folder(target, a="new a")
    folder(tmp_path / f".data.{atomic._HOST}-{dead_pid()}-old.tmp", a="old a")
    sweep(target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data")] == []
    assert (target / "a").read_text() == "new a"


def test_dead_writers_temps_are_swept_and_live_ones_kept(tmp_path):
    """kill -9 left .resume.pt.*.tmp and the like forever (issue #15, item 13)."""
    out = tmp_path / "logits.parquet"
    dead = tmp_path / f".logits.parquet.{atomic._HOST}-{dead_pid()}-abc.tmp"
    live = tmp_path / f".logits.parquet.{atomic._HOST}-{os.getppid()}-abc.tmp"  # a process that is running
    other = tmp_path / f".logits.parquet.elsewhere-{dead_pid()}-abc.tmp"  # another host's: cannot tell
    for p in (dead, live, other):
        p.write_text("partial")
    write_text(out, "done")
    assert out.read_text() == "done"
    assert not dead.exists() and live.exists() and other.exists()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    out = tmp_path / "x.json"
    write_text(out, "old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
