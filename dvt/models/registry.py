"""Build cascades by backbone name, and from a run of params.yaml.

Reuse flags on a one-exit model: a single-exit run keeps `feature_reuse` / `relation_reuse` at their
defaults (true) in params.yaml, so building is lenient: reuse modules exist only from exit 2 on and a
one-exit cascade is a plain ViT whatever the flags say. `check_reuse(..., strict=True)` is the
strict check for callers where the user set the flags explicitly and a no-op would be surprising.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from dvt.backbones import get_spec
from dvt.errors import DvtError
from dvt.grids import check_grids
from dvt.models.cascade import Cascade

if TYPE_CHECKING:
    from dvt.config import Config


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


def model_for_run(config: Config, run: str) -> Cascade:
    """The freshly initialised model of run `run` of `config` (train, collect, flops and speed use this)."""
    from dvt.data import dataset_info

    info = dataset_info(config.data)
    r = config.run(run)
    if r.timm:
        from dvt.models.from_timm import cascade_from_timm

        return cascade_from_timm(list(r.timm), grids=r.grids, img_size=info.image_size, in_chans=info.channels,
                                 num_classes=info.num_classes, pretrained_files=list(r.pretrained) or None,
                                 feature_reuse=r.feature_reuse, relation_reuse=r.relation_reuse, drop_path_rate=config.model.drop_path, drop_rate=config.model.drop_rate)
    return create_model(config.backbone_of(run), grids=r.exit_grids, img_size=info.image_size, in_chans=info.channels,
                        num_classes=info.num_classes, feature_reuse=r.feature_reuse,
                        relation_reuse=r.relation_reuse, drop_path_rate=config.model.drop_path,
                        drop_rate=config.model.drop_rate)


def standalone_for_run(config: Config, run: str, model: Cascade) -> Cascade:
    """A plain one-exit model of the run's backbone on its last grid, freshly initialised (the paper's
    Table 2 reference for early exit; `dvt speed` times it)."""
    r = config.run(run)
    if r.timm:
        from dvt.models.from_timm import cascade_from_timm

        return cascade_from_timm([r.timm[-1]], grids=model.grids[-1:], img_size=model.img_size,
                                 in_chans=model.in_chans, num_classes=model.num_classes)
    return create_model(config.backbone_of(run), grids=model.grids[-1:], img_size=model.img_size,
                        in_chans=model.in_chans, num_classes=model.num_classes)
