"""The model of a run of params.yaml: its backbone (or timm models), grids, reuse and the dataset's image
size, channels and classes. The pipeline's link to dvt.models, which itself knows nothing of params.yaml.
"""

from __future__ import annotations

from dvt.config import Config
from dvt.models.cascade import Cascade
from dvt.models.registry import create_model


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
