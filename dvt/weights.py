"""Put saved weights into a model: our checkpoints or the official DVT `*.pth.tar` files.

Strict loading (evaluating given weights as they are) must fit exactly. Non-strict loading is for
fine-tuning (e.g. ImageNet DVT -> CIFAR, paper Table 3): tensors whose shape differs, in practice
the classifier heads when the class count changes, keep their fresh initialisation.
"""

from __future__ import annotations

from pathlib import Path

from dvt import checkpoint
from dvt.errors import DvtError
from dvt.models import Cascade
from dvt.models.official import OFFICIAL_GRIDS, official_state


def _read(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DvtError(f"checkpoint {str(path)!r} not found")
    obj = checkpoint.read_file(path)
    if not isinstance(obj, dict):
        raise DvtError(f"{path}: not a checkpoint dict")
    return obj


def state_in_our_names(model: Cascade, obj: dict, path: str | Path) -> tuple[dict, str]:
    """The checkpoint's weights keyed like `model.state_dict()`, and what kind of file it was."""
    if obj.get("format") == checkpoint.FORMAT:
        # Evaluate the EMA weights when training kept them (the authors select checkpoints on EMA).
        return (obj.get("ema") or obj["model"]), "dvt checkpoint"
    if "model_state_dict" in obj:
        if tuple(model.grids) != OFFICIAL_GRIDS:
            raise DvtError(f"{path} is an official DVT checkpoint (exits {list(OFFICIAL_GRIDS)}); this run has grids "
                           f"{list(model.grids)}")
        return official_state(model, obj), "official DVT checkpoint"
    raise DvtError(f"{path}: neither a dvt checkpoint nor an official DVT checkpoint (no 'model_state_dict')")


def _listing(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")


def fitting_state(model: Cascade, path: str | Path, *, strict: bool) -> tuple[dict, str]:
    """(the tensors of `path` that go into `model`, a one-line description of them); DvtError when the file
    cannot be read or does not fit. Only names and shapes are compared, so `model` may be on the meta
    device: `dvt check` refuses a bad runs.R.init or runs.R.checkpoint this way before any stage runs."""
    obj = _read(path)
    if not strict and obj.get("format") != checkpoint.FORMAT and "model_state_dict" in obj:
        # Fine-tuning from official weights may change the head size: map names with a model of the
        # checkpoint's own head (on `model`'s device), then load shape by shape.
        heads = {k: v.shape for k, v in obj["model_state_dict"].items() if k.endswith("head.weight")}
        source_classes = next(iter(heads.values()))[0] if heads else model.num_classes
        from dvt.models import create_model

        with next(model.parameters()).device:
            source = create_model(model.spec.name, grids=model.grids, img_size=model.img_size,
                                  in_chans=model.in_chans, num_classes=int(source_classes),
                                  feature_reuse=model.exits[-1].has_feature_reuse,
                                  relation_reuse=model.exits[-1].has_relation_reuse)
        state, kind = state_in_our_names(source, obj, path)
    else:
        state, kind = state_in_our_names(model, obj, path)
    own = model.state_dict()
    misshapen = sorted(k for k in own.keys() & state.keys()
                       if not hasattr(state[k], "shape") or state[k].shape != own[k].shape)
    if strict:
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected or misshapen:
            parts = [f"{what} ({len(keys)}): {_listing(keys)}" for what, keys in
                     (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if keys]
            raise DvtError(f"{path} does not fit this run's model: " + "; ".join(parts))
        return state, f"{path} ({kind})"
    fitting = {k: state[k] for k in own.keys() & state.keys() if k not in misshapen}
    skipped = sorted(own.keys() - fitting.keys())
    if len(fitting) < len(own) // 2:
        raise DvtError(f"{path} shares too little with this run's model ({len(fitting)} of {len(own)} tensors fit); "
                       "is it another backbone?")
    note = f", kept fresh: {_listing(skipped, 4)}" if skipped else ""
    return fitting, f"{path} ({kind}{note})"


def load_weights(model: Cascade, path: str | Path, *, strict: bool) -> str:
    """Load `path` into `model`; returns a one-line description of what was loaded."""
    state, description = fitting_state(model, path, strict=strict)
    model.load_state_dict(state, strict=strict)
    return description
