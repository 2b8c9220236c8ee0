"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Temporary files and folders sit beside their target as `.<name>.<host>-<pid>-<random>.tmp`, so that
`.dvcignore` keeps them out of DVC's hashes and a later write can tell a dead writer's leftovers (same
host, process gone) from a live one's: every write to a target first sweeps the dead writers' temps
of that target. A folder is replaced in three renames (old aside, new in, old deleted); a kill between
them is finished or undone the next time the folder is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from dvt.errors import DvtError

_HOST = socket.gethostname().replace("-", "_").replace(".", "_") or "host"
_ASIDE = "old"  # the random part of an old folder moved aside during a swap


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _dead_temps(path: Path) -> list[Path]:
    """Temporaries of `path` left by writers on this host whose process is gone (a kill -9)."""
    found = []
    for p in path.parent.glob(f".{path.name}.{_HOST}-*.tmp"):
        pid = p.name[len(f".{path.name}.{_HOST}-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            found.append(p)
    return found


def sweep(path: str | os.PathLike) -> None:
    """Finish or undo a folder swap a kill interrupted, then delete dead writers' temporaries of `path`."""
    path = Path(path)
    dead = _dead_temps(path)
    aside = [p for p in dead if p.name.endswith(f"-{_ASIDE}.tmp")]
    if aside and not path.exists():
        # Killed between "old aside" and "new in": put the old folder back (a whole, older version).
        os.replace(max(aside, key=lambda p: p.stat().st_mtime), path)
    for p in dead:
        if p.exists():
            _remove(p)


# Write failures that are the machine's, not the program's: said in one line naming the output.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def _said_in_one_line(path: Path) -> Iterator[None]:
    """A full disk, a quota, a file-size limit or a read-only file system while writing `path` becomes
    one DvtError naming it. torch.save reports a failed write only as "[enforce fail at
    inline_container.cc...]", so that RuntimeError counts too, and numpy's without an errno."""
    try:
        yield
    except OSError as err:
        # numpy's tofile says a short write without an errno: "282240 requested and 3968 written"
        short = err.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(err))
        if err.errno not in _FULL_OR_READ_ONLY and not short:
            raise
        reason = err.strerror or f"a short write: {err}"
        raise DvtError(f"{path}: cannot be written ({reason}); free some space or make the folder writable, "
                       "then run again (the previous file, if any, is unchanged)") from None
    except RuntimeError as err:
        if "inline_container" not in str(err):
            raise
        raise DvtError(f"{path}: cannot be written (torch could not write the file: is the disk full or the "
                       "file larger than allowed?); free some space, then run again (the previous file, if "
                       "any, is unchanged)") from None


def _make_parent(path: Path) -> None:
    """Create the folder `path` goes in. A broken link or a file where a folder must be (e.g. `data`
    linked to a disk that is not mounted) is one DvtError, not mkdir's FileExistsError traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if (p.exists() or p.is_symlink()) and not p.is_dir()),
                       path.parent)
        what = f"a broken link to {os.readlink(blocker)}" if blocker.is_symlink() else "a file"
        raise DvtError(f"{path}: cannot be written: {blocker} is {what}, not a folder; "
                       "fix or remove it, then run again") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    with _said_in_one_line(path):
        _make_parent(path)
        sweep(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=suffix + ".tmp")
        os.close(fd)
        tmp = Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    with _said_in_one_line(path):
        _make_parent(path)
        sweep(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            yield tmp
            aside = path.parent / f"{_prefix(path)}{_ASIDE}.tmp"
            if path.exists():
                os.replace(path, aside)  # 1: the old folder steps aside (a kill here is undone by sweep)
            os.replace(tmp, path)  # 2: the new one takes its place
            _remove(aside)  # 3: (a kill before this leaves only a dead temp, which sweep deletes)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
