"""Reference CNNs from timm, trained by the same loop as the ViTs so a reader can judge them (Table 1).

A CNN run is a one-exit "cascade" whose exit is a timm model: it plugs into every stage (train,
collect, flops, budget, speed) through the Stage interface. Its head sees one globally pooled
vector, so its exit is recorded with grid 1.
"""

from __future__ import annotations

from torch import Tensor, nn

from dvt.backbones import CNN_GRID, ConvNetSpec
from dvt.models.stage import StageOutput


class ConvNetExit(nn.Module):
    """A timm CNN behind Stage's call: (B, C, S, S) -> StageOutput(logits, None, None); reuses nothing."""

    grid = CNN_GRID
    num_tokens = 1
    has_feature_reuse = False
    has_relation_reuse = False

    def __init__(self, *, spec: ConvNetSpec, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(spec.timm_name, pretrained=False, in_chans=in_chans, num_classes=num_classes,
                                     drop_rate=drop_rate, drop_path_rate=drop_path_rate, **spec.kwargs)

    def forward(self, x: Tensor, *, features: Tensor | None = None, relations: Tensor | None = None,
                keep_features: bool = False, keep_relations: bool = False) -> StageOutput:
        return StageOutput(self.net(x), None, None)
