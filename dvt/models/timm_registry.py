"""The released DVT cascades as timm models: `timm.create_model("dvt_t2t_vit_12")` once `dvt.models`
is imported, so timm's own tools (validate.py, benchmark.py, `resolve_data_config`, pretrained_cfg)
work on them.

    import dvt.models, timm
    model = timm.create_model("dvt_t2t_vit_12", pretrained=True,
                              pretrained_cfg_overlay=dict(file="DVT_T2t_vit_12.pth.tar"))

Each is the 3-exit cascade 7x7 -> 10x10 -> 14x14 at 224 px with both reuses. timm's tools
expect one logits tensor, so `forward` returns the last exit's (the whole cascade, as the paper's
"exit 3" accuracy); `forward_exits` returns every exit's, and `forward_exit` runs one exit at a time
for early exit (dvt.models.Cascade). Pretrained weights come from a local file: an official
`*.pth.tar` (keys less_less_token. / less_token. / normal_token.) or a checkpoint.pt of `dvt train`;
the official files live on Tsinghua Cloud and Google Drive, not on a hub timm can reach by name.
"""

from __future__ import annotations

from typing import Any, Mapping

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor

from dvt.errors import DvtError
from dvt.models.cascade import Cascade
from dvt.models.official import (
    OFFICIAL_GRIDS,
    OFFICIAL_PREFIXES,
    as_state_dict,
    official_to_ours,
)
from dvt.models.registry import create_model
from dvt.released import for_timm_name

PAPER = "arXiv:2105.15075"
ORIGIN = "https://github.com/blackfeather-wang/Dynamic-Vision-Transformer"


class TimmCascade(Cascade):
    """A DVT cascade whose `forward` gives the last exit's logits (B, num_classes), as timm's tools expect."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x)[-1]

    def forward_exits(self, x: Tensor) -> list[Tensor]:
        """[logits (B, num_classes)] of every exit, every exit on every image."""
        return super().forward(x)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
            "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            # every exit's head: replaced, not loaded, when num_classes differs from the file's
            "classifier": tuple(f"exits.{k}.head" for k in range(len(OFFICIAL_GRIDS))),
            "paper_ids": PAPER, "origin_url": ORIGIN, **kwargs}


default_cfgs = generate_default_cfgs({
    "dvt_t2t_vit_12.in1k": _cfg(),
    "dvt_t2t_vit_14.in1k": _cfg(),
    # DeiT-S exits tokenize with one convolution; timm adapts its input channels for in_chans != 3
    "dvt_deit_small.in1k": _cfg(first_conv=tuple(f"exits.{k}.patch_embed.proj" for k in range(3))),
})


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: Cascade) -> dict[str, Tensor]:
    """timm's loaded file -> our key names: an official checkpoint is renamed, ours kept as it is."""
    state_dict = as_state_dict(state_dict)  # an official *.pth.tar: under model_state_dict
    if any(k.startswith(OFFICIAL_PREFIXES) for k in state_dict):
        return official_to_ours(state_dict, model)
    return dict(state_dict)


def _create(variant: str, backbone: str, pretrained: bool, **kwargs: Any) -> TimmCascade:
    def build(*, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, drop_rate: float = 0.0,
              drop_path_rate: float = 0.0, feature_reuse: bool = True, relation_reuse: bool = True,
              **unused: Any) -> TimmCascade:
        # (timm passes what its tools know, e.g. global_pool; a cascade has nothing to do with it)
        return create_model(backbone, grids=OFFICIAL_GRIDS, img_size=img_size, in_chans=in_chans,
                            num_classes=num_classes, feature_reuse=feature_reuse, relation_reuse=relation_reuse,
                            drop_path_rate=drop_path_rate, drop_rate=drop_rate, model_class=TimmCascade)

    if pretrained and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
        # timm would warn "No pretrained weights exist" and go on with random weights: say where they are
        released = for_timm_name(variant)
        raise DvtError(f"{variant}: pretrained=True needs the released checkpoint as a local file, "
                       f"pretrained_cfg_overlay=dict(file=...); {released.where() if released else ''}")
    return build_model_with_cfg(build, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def dvt_t2t_vit_12(pretrained: bool = False, **kwargs: Any) -> TimmCascade:
    """DVT on T2T-ViT-12: 0.47 / 1.46 / 3.50 cumulative GMACs per exit."""
    return _create("dvt_t2t_vit_12", "t2t_vit_12", pretrained, **kwargs)


@register_model
def dvt_t2t_vit_14(pretrained: bool = False, **kwargs: Any) -> TimmCascade:
    """DVT on T2T-ViT-14."""
    return _create("dvt_t2t_vit_14", "t2t_vit_14", pretrained, **kwargs)


@register_model
def dvt_deit_small(pretrained: bool = False, **kwargs: Any) -> TimmCascade:
    """DVT on DeiT-S."""
    return _create("dvt_deit_small", "deit_small", pretrained, **kwargs)
