"""`dvt check --verify`: are the files on disk the bytes that were written?

Two records are checked, each against a fresh hash of the file:

* every trained checkpoint against the sha256 `dvt train` wrote into train.json beside it (whatever
  the engine, with or without DVC);
* every output in dvc.lock (when there is one) against its md5 there; a folder output file by file,
  against the listing DVC keeps in its cache.

DVC itself re-hashes nothing it restores: `dvc checkout`, `pull`, `status` and `push` trust the
cache, so one damaged cache object is checked out, reported as up to date and pushed under the good
name. A damaged file is one line here, with what restores it: `dvc checkout -f` when DVC's cache
still holds the good bytes, else deleting the damaged cache object and `dvc pull` (or training
again).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from dvt import layout
from dvt.checkpoint import RECORD, recorded_sha256, sha256
from dvt.config import Config
from dvt.errors import pipeline_module


@dataclass(frozen=True)
class Damage:
    path: str
    what: str  # why and what to do, one line

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def md5(path: Path) -> str:
    """DVC's hash of a file (its cache is addressed by md5)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def checkpoints(config: Config) -> tuple[int, list[Damage]]:
    """(checkpoints checked, the damaged ones) over every run and seed of params."""
    checked, damaged = 0, []
    for seed in config.seeds:
        seeded = config.with_seed(seed)
        for run in config.runs:
            path = seeded.run_dir(run) / layout.CHECKPOINT
            expected = recorded_sha256(path) if path.is_file() else None
            if expected is None:
                continue
            checked += 1
            if sha256(path) != expected:
                damaged.append(Damage(str(path), f"not the checkpoint train recorded in {path.parent / RECORD}; "
                                      f"restore it from DVC (below) or train again "
                                      f"(`{seeded.command('train', run)} --restart`)"))
    return checked, damaged


def dvc_outputs(root: Path) -> tuple[int, list[Damage]]:
    """(files checked, the damaged ones) of every output dvc.lock lists, where the workspace has them."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return 0, []
    repo = pipeline_module("dvc.repo", needed_for="checking DVC's outputs against dvc.lock")
    cache = repo.Repo(str(root)).cache.local
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    checked, damaged = 0, []
    for out in (o for stage in stages.values() for o in stage.get("outs", [])):
        oid = out.get("md5")
        if oid is None:
            continue
        path = root / out["path"]
        if oid.endswith(".dir"):
            listing = Path(cache.oid_to_path(oid))
            if not path.is_dir() or not listing.is_file():
                continue
            files = [(path / entry["relpath"], entry["md5"]) for entry in json.loads(listing.read_text())]
        else:
            files = [(path, oid)]
        for file, want in files:
            if not file.is_file():
                continue
            checked += 1
            cached = Path(cache.oid_to_path(want))
            rel = file.relative_to(root)
            if md5(file) == want:
                # The workspace is right; a damaged cache copy (not the same file: DVC copies by default)
                # would still be pushed under the good name.
                if cached.is_file() and not cached.samefile(file) and md5(cached) != want:
                    damaged.append(Damage(str(cached), f"DVC's cache copy of {rel} is damaged (the workspace file is "
                                          f"intact): delete it and `dvc commit -f {out['path']}` before any push"))
                continue
            if cached.is_file() and md5(cached) == want:
                fix = f"differs from dvc.lock; `dvc checkout -f {out['path']}` restores it from the cache"
            elif cached.is_file():
                fix = (f"differs from dvc.lock and DVC's cache copy {cached} is damaged too: delete that file, then "
                       f"`dvc pull -f {out['path']}` from your remote (or rerun its stage)")
            else:
                fix = f"differs from dvc.lock; `dvc pull -f {out['path']}` from your remote (or rerun its stage)"
            damaged.append(Damage(str(rel), fix))
    return checked, damaged
