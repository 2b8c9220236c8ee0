"""Put saved weights into a model: our checkpoints or the official DVT `*.pth.tar` files.

Strict loading (evaluating given weights as they are) must fit exactly. Non-strict loading is for
fine-tuning (e.g. ImageNet DVT -> CIFAR, paper Table 3): tensors whose shape differs, in practice
the classifier heads when the class count changes, keep their fresh initialisation.
"""

from __future__ import annotations

import copy
from pathlib import Path

from dvt import checkpoint
from dvt.errors import DvtError
from dvt.models import Cascade, load_official
from dvt.models.official import OFFICIAL_GRIDS


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
        # Load into a copy so a refused checkpoint leaves `model` untouched.
        scratch = load_official(copy.deepcopy(model), obj)
        return scratch.state_dict(), "official DVT checkpoint"
    raise DvtError(f"{path}: neither a dvt checkpoint nor an official DVT checkpoint (no 'model_state_dict')")


def load_weights(model: Cascade, path: str | Path, *, strict: bool) -> str:
    """Load `path` into `model`; returns a one-line description of what was loaded."""
    obj = _read(path)
    if not strict and obj.get("format") != checkpoint.FORMAT and "model_state_dict" in obj:
        # Fine-tuning from official weights may change the head size: map names with a model of the
        # checkpoint's own head, then load shape by shape.
        heads = {k: v.shape for k, v in obj["model_state_dict"].items() if k.endswith("head.weight")}
        source_classes = next(iter(heads.values()))[0] if heads else model.num_classes
        from dvt.models import create_model

        source = create_model(model.spec.name, grids=model.grids, img_size=model.img_size, in_chans=model.in_chans,
                              num_classes=int(source_classes), feature_reuse=model.exits[-1].has_feature_reuse,
                              relation_reuse=model.exits[-1].has_relation_reuse)
        state, kind = state_in_our_names(source, obj, path)
    else:
        state, kind = state_in_our_names(model, obj, path)
    if strict:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise DvtError(f"{path} does not fit this run's model: {str(err).splitlines()[0]} "
                           f"({str(err).count(chr(10))} lines of detail)") from None
        return f"{path} ({kind})"
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(fitting))
    if len(fitting) < len(own) // 2:
        raise DvtError(f"{path} shares too little with this run's model ({len(fitting)} of {len(own)} tensors fit); "
                       "is it another backbone?")
    model.load_state_dict(fitting, strict=False)
    note = f", kept fresh: {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}" if skipped else ""
    return f"{path} ({kind}{note})"
