"""Atomic writes survive kills: a half-done folder swap is undone or finished, dead writers' temps go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvt import atomic
from dvt.atomic import atomic_dir, atomic_path, sweep, write_text
from dvt.errors import DvtError


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


# A file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) fails writes with EFBIG as a full disk fails
# them with ENOSPC, without filling this machine's disk; as root a read-only folder cannot be staged.
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from dvt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_the_old_one(tmp_path):
    """Issue #31, item 4: raw OSErrors and torch's inline_container.cc message before."""
    import torch

    from dvt import checkpoint

    old = tmp_path / "checkpoint.pt"
    checkpoint.save(old, {"model": {"w": torch.zeros(4)}})
    before = old.read_bytes()
    code = ("import resource, signal, torch\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\nfrom dvt import checkpoint\n"
            "from dvt.errors import DvtError\ntry:\n"
            f"    checkpoint.save({str(old)!r}, {{'model': {{'w': torch.zeros(100000)}}}})\n"
            "except DvtError as err:\n    print(err)\n")
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert said.stdout.startswith(f"{old}: cannot be written (torch could not write the file"), said.stdout + said.stderr
    assert old.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataset: synthetic\n  root: {tmp_path / 'data'}\n  calibration_size: 40\n"
                      "  synthetic: {train_size: 400, test_size: 100}\n")
    out = subprocess.run([sys.executable, "-c", LIMITED, "fetch", "--params", str(params)], capture_output=True,
                         text=True, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"dvt fetch: error: {tmp_path / 'data'}") and "cannot be written" in lines[0]
    assert not list(tmp_path.glob("data/**/*.tmp"))


def test_a_broken_data_link_is_one_line_and_left_alone(tmp_path, capsys):
    """`data` linked to a disk that is not mounted used to end `dvt fetch` in mkdir's FileExistsError."""
    from dvt.cli import main
    from tests.helpers import write_params_file

    data, target = tmp_path / "data", tmp_path / "unmounted" / "data"
    data.symlink_to(target)
    params = write_params_file(tmp_path, {"data": {"dataset": "synthetic", "calibration_size": 10,
                                                   "synthetic": {"train_size": 50, "test_size": 10}},
                                          "train": {"batch_size": 8}, "runs": {"single": {"grids": [2]}}})
    assert main(["fetch", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{data} is a broken link to {target}, not a folder; fix or remove it" in err, err
    assert data.is_symlink() and not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]


@pytest.mark.parametrize("write", [atomic_dir, atomic_path])
def test_a_file_where_a_folder_goes_is_one_line_naming_it(tmp_path, write):
    (tmp_path / "a").write_text("in the way")
    with pytest.raises(DvtError, match=f"{tmp_path / 'a'} is a file, not a folder; fix or remove it"):
        with write(tmp_path / "a" / "b" / "out"):
            pass
    assert (tmp_path / "a").read_text() == "in the way"
