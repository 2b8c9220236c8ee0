"""One writer per run: a second `dvt train` of the same run and seed refuses while the first runs.

An advisory `flock` on a file beside the outputs: the kernel drops it when its process ends however it
ends, so a killed trainer never leaves a lock that blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from dvt.errors import DvtError


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold `folder`/.<what>.lock for the block; DvtError at once if another process holds it."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{what}.lock"
    try:
        handle = open(path, "a")  # never written: its bytes (and DVC's view of the folder) stay as they are
    except OSError as err:
        if not path.is_file():
            for p in created:
                p.rmdir()
            raise DvtError(f"{folder}: cannot create {path.name} ({err.strerror}); is the folder read-only?") from None
        # A read-only folder: flock needs no write access, and a `dvt train` with nothing to do writes nothing.
        handle = open(path, "rb")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DvtError(f"{folder} is busy: another `dvt {what}` is working on it; wait for it to finish "
                           "or stop it") from None
        try:
            yield
        except BaseException:
            # A refused or failed first run leaves no folder behind that held nothing but this lock.
            if created and [p.name for p in folder.iterdir()] == [path.name]:
                path.unlink()
                for p in created:
                    p.rmdir()
            raise
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
