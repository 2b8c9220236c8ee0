"""Import and export the released DVT checkpoints.

An official `*.pth.tar` is a dict whose `model_state_dict` holds three sub-models, prefixed
`less_less_token.` (7x7), `less_token.` (10x10) and `normal_token.` (14x14). Inside each, names are
ours except for two reuse modules: `feature_resuse_mlp` (sic) is our `feature_reuse`, and
`relation_reuse_conv` our `relation_reuse`. Loading is strict: every key must be there with the
right shape and nothing else, otherwise a DvtError lists what is missing, unexpected or misshapen.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import Tensor

from dvt.errors import DvtError
from dvt.models.cascade import Cascade

OFFICIAL_PREFIXES = ("less_less_token.", "less_token.", "normal_token.")
OFFICIAL_GRIDS = (7, 10, 14)
# (our name piece, official name piece) inside one exit
_RENAMES = ((".feature_reuse.", ".feature_resuse_mlp."), ("relation_reuse.", "relation_reuse_conv."))


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _check_layout(model: Cascade) -> None:
    if tuple(model.grids) != OFFICIAL_GRIDS:
        raise DvtError(f"the official DVT layout has exits {list(OFFICIAL_GRIDS)}; this model has "
                       f"{list(model.grids)}")


def _ours_to_official(key: str) -> str:
    _, k, rest = key.split(".", 2)  # "exits.{k}.{rest}"
    for ours, theirs in _RENAMES:
        rest = rest.replace(ours, theirs, 1)
    return OFFICIAL_PREFIXES[int(k)] + rest


def to_official_state_dict(model: Cascade) -> dict[str, Tensor]:
    """Our 7-10-14 cascade's state dict under the official key names (tensors shared, not copied)."""
    _check_layout(model)
    return {_ours_to_official(k): v for k, v in model.state_dict().items()}


def as_state_dict(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict of a checkpoint path, a full checkpoint dict (under `model_state_dict`) or a bare
    state dict, without a DataParallel `module.` prefix."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        try:
            obj = torch.load(path_or_dict, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DvtError(f"checkpoint {str(path_or_dict)!r} not found") from None
        except Exception as err:
            # weights_only refuses arbitrary pickled objects; a trusted file can be loaded by the
            # caller with torch.load(..., weights_only=False) and passed in as a dict.
            raise DvtError(f"checkpoint {str(path_or_dict)!r} cannot be read safely: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    else:
        obj = path_or_dict
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping):
        raise DvtError("checkpoint holds no state dict (expected a dict with 'model_state_dict')")
    # Checkpoints saved from DataParallel/DDP carry a uniform 'module.' prefix.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def official_to_ours(state_dict: Mapping[str, Any], model: Cascade) -> dict[str, Any]:
    """An official state dict under our key names, for `model`'s layout; keys `model` lacks are kept as
    they are, so a strict load still names them."""
    _check_layout(model)
    ours = {_ours_to_official(k): k for k in model.state_dict()}
    return {ours.get(k, k): v for k, v in state_dict.items()}


def official_state(model: Cascade, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """An official DVT checkpoint's tensors keyed like `model.state_dict()`, checked to fit it exactly.

    Only shapes are compared, so `model` may live on the meta device (`dvt check` tests a checkpoint
    that way without allocating the model).
    """
    _check_layout(model)
    given = as_state_dict(path_or_dict)
    ours = model.state_dict()
    wanted = {_ours_to_official(k): k for k in ours}
    missing = sorted(set(wanted) - set(given))
    unexpected = sorted(set(given) - set(wanted))
    misshapen = sorted(f"{k} {_shape(given[k])} vs {_shape(ours[wanted[k]])}" for k in set(wanted) & set(given)
                       if not isinstance(given[k], Tensor) or given[k].shape != ours[wanted[k]].shape)
    if missing or unexpected or misshapen:
        parts = [f"{name} ({len(keys)}): {_listing(keys)}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if keys]
        raise DvtError(f"checkpoint does not fit a {model.spec.name} cascade {list(model.grids)} "
                       f"(feature_reuse={model.exits[-1].has_feature_reuse}, "
                       f"relation_reuse={model.exits[-1].has_relation_reuse}): " + "; ".join(parts))
    return {wanted[k]: given[k] for k in wanted}


def load_official(model: Cascade, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> Cascade:
    """Load an official DVT checkpoint (path, full checkpoint dict or bare state dict) into `model`."""
    model.load_state_dict(official_state(model, path_or_dict), strict=True)
    return model
