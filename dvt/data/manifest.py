"""MANIFEST.json: what `dvt fetch` wrote (source, classes, counts, checksums) and from which params.

The manifest is written last, so its presence means the folder is complete; its `params` and file
checksums decide whether a rerun of `dvt fetch` has anything to do. It carries a checksum of its own
content, and the stages check it and the sha256 of every file of a split they load: a hand-edited
manifest or a data file changed after the fetch is refused with one line that says to re-fetch. (A
manifest without recorded files, written by hand for data of one's own, is taken as it is.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dvt.atomic import write_json
from dvt.config import DataConfig, to_dict
from dvt.errors import DvtError

MANIFEST = "MANIFEST.json"
# Bump when dvt/data/cluttered.py composes different bytes from the same params.
CLUTTERED_VERSION = 2
Manifest = dict[str, Any]


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_checksums(folder: Path) -> dict[str, str]:
    return {p.name: f"sha256:{sha256(p)}" for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def fingerprint(data: DataConfig) -> dict[str, object]:
    """The params that determine the fetched bytes; a manifest with the same ones is up to date."""
    fp: dict[str, object] = {"dataset": data.dataset, "source": data.source,
                             "calibration_size": data.calibration_size}
    if data.dataset == "synthetic":
        fp["synthetic"] = {k: getattr(data.synthetic, k) for k in data.synthetic.__dataclass_fields__}
    if data.dataset == "cluttered-fashion-mnist":
        # The derivation's version goes in too: a change of how images are composed refetches.
        # As plain JSON data (lists, not tuples), so that it compares equal to what the manifest stored.
        fp["cluttered"] = {"version": CLUTTERED_VERSION, **to_dict(data.cluttered)}
    return fp


# What every stage after fetch reads from a manifest.
REQUIRED = ("dataset", "format", "classes", "counts", "image_size", "channels")
# The files of each split, as `dvt fetch` names them (arrays; ImageNet: an index into the source folder).
SPLIT_FILES = ("{split}_images.npy", "{split}_labels.npy", "{split}_objects.npy", "{split}.csv")


def _digest(manifest: Manifest) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(folder: Path, body: Manifest) -> Manifest:
    body = {**body, "checksum": _digest(body)}
    write_json(folder / MANIFEST, body)
    return body


def fetched_with(folder: Path, params: dict[str, Any]) -> Manifest | None:
    """The manifest if `folder` was fetched with `params`, else None; the files are not read (cheap enough
    for `dvt check` before every stage)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(manifest, dict) or manifest.get("params") != params:
        return None
    if manifest.get("checksum") != _digest(manifest):  # edited by hand, or written before manifests had one
        return None
    return manifest


def is_current(folder: Path, params: dict[str, Any]) -> Manifest | None:
    """The manifest if `folder` was fetched with `params` and every file is intact, else None."""
    manifest = fetched_with(folder, params)
    if manifest is None:
        return None
    files = manifest.get("files", {})
    if any(not (folder / name).is_file() for name in files):
        return None
    return manifest if file_checksums(folder) == files else None


def read_manifest(data: DataConfig) -> tuple[Path, Manifest]:
    """The fetched folder and its manifest, for the stages after fetch."""
    folder = Path(data.root) / data.dataset
    path = folder / MANIFEST
    if not path.is_file():
        raise DvtError(f"{folder} has no {MANIFEST}: run `dvt fetch` first")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError):
        manifest = None
    if not isinstance(manifest, dict):
        raise DvtError(f"{path} is not a readable manifest: run `dvt fetch` again")
    if "files" in manifest and manifest.get("checksum") != _digest(manifest):
        raise DvtError(f"{path} was changed after `dvt fetch` wrote it: run `dvt fetch` again")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise DvtError(f"{path} lacks {', '.join(missing)}: run `dvt fetch` again")
    # Otherwise an edit of, say, data.calibration_size would silently train on the old split. (A
    # manifest written by hand, without the params `dvt fetch` records, is taken as it is.)
    wanted, fetched = fingerprint(data), manifest.get("params", {})
    stale = [f"{key} = {fetched[key]!r}" for key in wanted if key in fetched and fetched[key] != wanted[key]]
    if stale:
        raise DvtError(f"{folder} was fetched with data.{', data.'.join(stale)}, not what the params say now: "
                       f"run `dvt fetch` again")
    return folder, manifest


_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, checked in this process


def verify_split(folder: Path, manifest: Manifest, split: str) -> None:
    """DvtError unless every file of `split` the manifest records is there with its recorded sha256."""
    recorded = manifest.get("files", {})
    for name in (pattern.format(split=split) for pattern in SPLIT_FILES):
        if name not in recorded:
            continue
        path = folder / name
        if not path.is_file():
            raise DvtError(f"{path} is missing: run `dvt fetch` again")
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _verified:
            _verified[key] = f"sha256:{sha256(path)}"
        if _verified[key] != recorded[name]:
            raise DvtError(f"{path} changed after `dvt fetch` wrote it (sha256 differs): run `dvt fetch` again")
