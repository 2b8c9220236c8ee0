"""Our checkpoint format: weights plus everything needed to resume bit-for-bit and to trust the file.

A checkpoint is a dict with `model` (state_dict), `config` (the settings that shaped the weights),
`epoch` (finished epochs), `optimizer`, `scheduler`, `ema`, `rng` (python, numpy, torch and the data
order generator), `log` (per-epoch rows so far), `git_commit` and `format`. Written atomically.
Trained by several processes, it also has `rng_per_rank`: every process's `rng`, in rank order.

`dvt train` records the finished file's sha256 in train.json beside it (RECORD, "checkpoint_sha256")
before the file appears, and every stage that reads the weights checks them against that record
(`verified_sha256`): DVC re-hashes nothing it restores from its cache, so a damaged cache object would
otherwise be loaded, collected and pushed as if it were the trained model.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dvt import layout
from dvt.atomic import atomic_path
from dvt.config import Config, differences, to_dict
from dvt.data.manifest import fingerprint, sha256
from dvt.errors import DvtError

if TYPE_CHECKING:
    import torch

FORMAT = "dvt-checkpoint-v1"
RECORD = layout.TRAIN_SUMMARY
__all__ = ["FORMAT", "RECORD", "run_fingerprint", "describe_difference", "save", "save_recorded", "load", "read_file",
           "sha256", "recorded_sha256", "verified_sha256", "rng_state", "set_rng_state", "git_commit"]


def run_fingerprint(config: Config, run: str) -> dict[str, Any]:
    """The settings that determine a run's weights; a checkpoint resumes only under the same ones
    (train.threads included: on the CPU the weights depend on it in the last bits; data.num_workers
    too: each loader worker draws the augmentations from its own random stream)."""
    train = to_dict(config.train)
    return {"data": {**fingerprint(config.data), "image_size": config.data.image_size,
                     "num_workers": config.data.num_workers},
            "model": to_dict(config.model), "run": to_dict(config.run(run)), "train": train, "seed": config.seed}


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first differing key, e.g. 'train.lr: 0.001 in the checkpoint, 0.002 now' ('' if none)."""
    found = differences(old, new)
    if not found:
        return ""
    key, a, b = found[0]
    return f"{key}: {a!r} in the checkpoint, {b!r} now"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def rng_state(data_generator: torch.Generator | None = None) -> dict[str, Any]:
    import torch  # here, not at the top: `dvt budget` and `dvt report` need this module but not torch (~3 s)

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator | None = None) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])


def save(path: str | Path, payload: dict[str, Any]) -> None:
    _save(path, payload)


def save_recorded(path: str | Path, payload: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Save a finished checkpoint and write `summary` with its sha256 into RECORD beside it, the record
    first: the checkpoint appears only when its record is there. Returns what RECORD holds."""
    from dvt.atomic import write_json

    recorded: dict[str, Any] = {}

    def record(tmp: Path) -> None:
        recorded.update(summary, checkpoint_sha256=sha256(tmp))
        write_json(Path(path).parent / RECORD, recorded)

    _save(path, payload, then=record)
    return recorded


def canonical(obj: Any) -> Any:
    """`obj` with fresh containers and interned strings, so that pickle writes the same bytes for the same
    content whatever the objects' history.

    Pickle writes an object seen before as a reference to it, so the bytes depend on which equal strings,
    tuples, lists and dicts happen to be one object: a run resumed from resume.pt holds the loaded copies
    where an uninterrupted run holds the constructors' (a 3-epoch tiny run: a different checkpoint.pt after
    each of 2 resumes, the same tensors). Here every equal string is one object and no container is
    shared; tensors are left as they are (their storages are written once each, by content key).
    """
    if isinstance(obj, str):
        return sys.intern(str(obj))
    if type(obj) in (dict, OrderedDict):
        out = type(obj)((canonical(k), canonical(v)) for k, v in obj.items())
        if getattr(obj, "__dict__", None):  # a state_dict's _metadata (module versions), pickled with it
            out.__dict__.update(canonical(vars(obj)))
        return out
    if type(obj) in (list, tuple):
        return type(obj)(canonical(v) for v in obj)
    return obj


def _save(path: str | Path, payload: dict[str, Any], then=None) -> None:
    import torch

    # Saved through a file object: given a path, torch names the archive inside after the file, and the
    # temporary file's random name would make every save of the same state a different file (hash).
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(canonical({"format": FORMAT, "git_commit": git_commit(), **payload}), handle)
        if then is not None:
            then(tmp)


def recorded_sha256(path: Path) -> str | None:
    """The sha256 train recorded for the checkpoint at `path`; None without a record (a checkpoint
    from elsewhere, or from a train before the record existed)."""
    try:
        record = json.loads((Path(path).parent / RECORD).read_text())
    except (OSError, ValueError):
        return None
    found = record.get("checkpoint_sha256") if isinstance(record, dict) else None
    return found if isinstance(found, str) else None


def verified_sha256(path: str | Path) -> str:
    """The sha256 of the checkpoint at `path`, after checking it against train's record: a damaged file
    is one DvtError line that says how to restore it, so nothing is computed from damaged weights."""
    path = Path(path)
    actual, expected = sha256(path), recorded_sha256(path)
    if expected is not None and actual != expected:
        raise DvtError(f"{path} is damaged: its sha256 {actual[:12]}... is not the {expected[:12]}... train recorded "
                       f"in {path.parent / RECORD}; restore it (`dvt check --verify` says how) or train it again")
    return actual


def read_file(path: Path, *, hint: str = "") -> Any:
    """torch.load on the CPU; a file that is not a torch checkpoint is one DvtError line (+ `hint`)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    # Unpickling bytes that are not a checkpoint fails with whatever the bytes happen to trigger
    # (UnpicklingError, BadZipFile, UnicodeDecodeError, KeyError, ...): every one means "not readable".
    except Exception as err:  # noqa: BLE001
        reason = (str(err).strip().splitlines() or [""])[0]
        raise DvtError(f"{path}: not a readable checkpoint ({type(err).__name__}: {reason}){hint}") from None


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    ckpt = read_file(path, hint="; delete it and train again (`dvt train --restart` starts over)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DvtError(f"{path}: not a dvt checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else '?'})")
    return ckpt


def finished_path(config: Config, run: str) -> Path:
    """runs/<run>/seed<S>/checkpoint.pt, which must exist (else one line: train it first)."""
    path = config.run_dir(run) / layout.CHECKPOINT
    if not path.is_file():
        raise DvtError(f"{path} not found: train it first with `{config.command('train', run)}`")
    return path


def trained_checkpoint(config: Config, run: str) -> tuple[Path, str]:
    """runs/R/seed<S>/checkpoint.pt and its (verified) sha256, refusing a missing, damaged, half-trained
    or differently-configured one."""
    path = finished_path(config, run)
    sha = verified_sha256(path)
    state = load(path)
    diff = describe_difference(state.get("config", {}), run_fingerprint(config, run))
    if diff:
        raise DvtError(f"{path} was trained with other settings ({diff}); "
                       f"rerun `{config.command('train', run)} --restart`")
    if state.get("epoch", 0) < config.train.epochs:
        raise DvtError(f"{path} holds {state.get('epoch', 0)} of {config.train.epochs} epochs: finish it with "
                       f"`{config.command('train', run)}`")
    return path, sha
