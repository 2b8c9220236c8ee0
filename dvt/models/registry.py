"""Build cascades by backbone name (dvt.run_models builds a run of params.yaml).

Reuse flags on a one-exit model: a single-exit run keeps `feature_reuse` / `relation_reuse` at their
defaults (true) in params.yaml, so building is lenient: reuse modules exist only from exit 2 on and a
one-exit cascade is a plain ViT whatever the flags say. `check_reuse(..., strict=True)` is the
strict check for callers where the user set the flags explicitly and a no-op would be surprising.
"""

from __future__ import annotations

from typing import Sequence

from dvt.backbones import get_spec
from dvt.errors import DvtError
from dvt.grids import check_grids
from dvt.models.cascade import Cascade


def check_reuse(grids: Sequence[int], feature_reuse: bool, relation_reuse: bool, strict: bool = True) -> None:
    """Strict mode: reuse asked for on a one-exit model is an error (there is no exit to reuse)."""
    if strict and len(grids) == 1 and (feature_reuse or relation_reuse):
        asked = " and ".join(n for n, on in (("feature_reuse", feature_reuse), ("relation_reuse", relation_reuse)) if on)
        raise DvtError(f"{asked} asked for a single-exit model (grids {list(grids)}): reuse needs at least two "
                       "exits; set it to false or add grids")


def create_model(backbone: str, *, grids: Sequence[int], img_size: int, in_chans: int, num_classes: int,
                 feature_reuse: bool = True, relation_reuse: bool = True, drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0, model_class: type[Cascade] = Cascade) -> Cascade:
    """A freshly initialised cascade (model_class: a Cascade subclass, e.g. timm's view of it)."""
    spec = get_spec(backbone)
    check_grids(backbone, grids, img_size)
    if in_chans < 1 or num_classes < 1:
        raise DvtError(f"in_chans ({in_chans}) and num_classes ({num_classes}) must be >= 1")
    return model_class(spec=spec, grids=grids, img_size=img_size, in_chans=in_chans, num_classes=num_classes,
                   feature_reuse=feature_reuse, relation_reuse=relation_reuse, drop_path_rate=drop_path_rate,
                   drop_rate=drop_rate)
