"""MANIFEST.json: what `dvt fetch` wrote (source, classes, counts, checksums) and from which params.

The manifest is written last, so its presence means the folder is complete; its `params` and file
checksums decide whether a rerun of `dvt fetch` has anything to do.
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


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def write_manifest(folder: Path, body: Manifest) -> Manifest:
    write_json(folder / MANIFEST, body)
    return body


def is_current(folder: Path, params: dict[str, Any]) -> Manifest | None:
    """The manifest if `folder` was fetched with `params` and every file is intact, else None."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if manifest.get("params") != params:
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
    manifest = json.loads(path.read_text())
    # Otherwise an edit of, say, data.calibration_size would silently train on the old split. (A
    # manifest written by hand, without the params `dvt fetch` records, is taken as it is.)
    wanted, fetched = fingerprint(data), manifest.get("params", {})
    stale = [f"{key} = {fetched[key]!r}" for key in wanted if key in fetched and fetched[key] != wanted[key]]
    if stale:
        raise DvtError(f"{folder} was fetched with data.{', data.'.join(stale)}, not what the params say now: "
                       f"run `dvt fetch` again")
    return folder, manifest
