"""A DVT cascade from timm ViTs, one per exit: the MindSpore release's "two lines" API on the models
researchers already have.

    import timm
    from dvt.models import cascade_from_timm
    model = cascade_from_timm([timm.create_model("deit_small_patch16_224", patch_size=32, pretrained=True),
                               timm.create_model("deit_small_patch16_224", pretrained=True)],
                              feature_reuse=True, relation_reuse=True)
    # or by name: cascade_from_timm(["deit_small_patch16_224"] * 2, grids=[7, 14])

Each exit takes its ViT's weights as they are (our Stage has timm's parameter names and forward), so
with both reuses off every exit computes exactly its ViT's logits. With feature reuse a block's norm2
and fc1 also see the upstream exit's r reused channels: the ViT's weights fill the first D channels,
fc1's columns for the reused channels start at zero (at initialisation the reused features do not
move the MLP input yet), norm2's start at the identity. The reuse modules themselves start fresh.

Only plain ViTs fit: a class token and no register tokens, a learned position embedding that
includes the class token, patch embedding without norm, pre-norm blocks without layer scale or q/k
norm, a final LayerNorm and a linear head on the class token. All exits share one shape (width,
depth, heads, MLP ratio); their grids must grow.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from dvt.backbones import BackboneSpec
from dvt.errors import DvtError
from dvt.grids import patch_geometry
from dvt.models.cascade import Cascade


def _timm_vit(name: str, *, grid: int, img_size: int, num_classes: int | None, in_chans: int,
              pretrained_file: str | None) -> nn.Module:
    """timm model `name` with the patch size that makes `grid` x `grid` tokens on img_size px
    (timm resamples pretrained patch and position embeddings to it)."""
    import timm

    if img_size % grid:
        raise DvtError(f"a timm ViT makes a {grid}x{grid} grid only if the image side ({img_size} px) is a multiple "
                       f"of {grid}: timm has no padded patch embedding like ours")
    kwargs: dict[str, Any] = {"img_size": img_size, "patch_size": img_size // grid, "in_chans": in_chans}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained_file is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)})
    if not timm.is_model(name):
        raise DvtError(f"{name!r} is not a timm model (timm.list_models() lists them)")
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:  # a CNN, say, has no patch size
        raise DvtError(f"{name} is not a timm VisionTransformer with img_size and patch_size ({err})") from None
    except Exception as err:  # noqa: BLE001 - whatever a foreign weights file makes timm's loader raise
        if pretrained_file is None:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DvtError(f"{pretrained_file}: cannot be loaded into {name} ({reason})") from None


def _spec_of(model: nn.Module) -> BackboneSpec:
    """The BackboneSpec of a plain timm ViT; DvtError naming what does not fit."""
    from timm.models.vision_transformer import VisionTransformer

    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    if not isinstance(model, VisionTransformer):
        raise DvtError(f"{name} is not a timm VisionTransformer")
    block = model.blocks[0]
    unfit = [why for bad, why in (
        (not model.has_class_token or model.num_prefix_tokens != 1, "a class token and no register tokens"),
        (model.global_pool != "token", "global_pool='token'"),
        (model.no_embed_class or model.pos_embed is None, "a learned position embedding over the class token too"),
        (not isinstance(model.patch_embed.norm, nn.Identity), "patch embedding without norm"),
        (not isinstance(model.norm_pre, nn.Identity) or not isinstance(model.fc_norm, nn.Identity),
         "no pre-norm and no fc_norm"),
        (not isinstance(model.norm, nn.LayerNorm), "a final LayerNorm"),
        (any(not isinstance(getattr(b, n), nn.Identity) for b in model.blocks for n in ("ls1", "ls2")), "no layer scale"),
        (any(not isinstance(getattr(b.attn, n, nn.Identity()), nn.Identity) for b in model.blocks
             for n in ("q_norm", "k_norm", "norm")), "no q/k norm"),
        (not isinstance(model.head, nn.Linear), "a linear head (its default weights have none: pass num_classes)"
         if model.num_classes == 0 else "a linear head"),
    ) if bad]
    if unfit:
        raise DvtError(f"{name} is not a plain ViT a DVT exit can take: it needs " + ", ".join(unfit))
    dim = model.embed_dim
    return BackboneSpec(name=f"timm:{name}", tokenizer="patch", embed_dim=dim, depth=len(model.blocks),
                        num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim,
                        qkv_bias=block.attn.qkv.bias is not None, norm_eps=block.norm1.eps, pos_embed="learned",
                        # the paper's feature-reuse width (DeiT-S, T2T-ViT); halved for narrow CPU-sized models
                        reuse_hidden=128 if dim >= 192 else dim // 2, reuse_dim=48 if dim >= 192 else dim // 4)


def _grid_of(model: nn.Module, img_size: int) -> int:
    gh, gw = model.patch_embed.grid_size
    (ph, pw), (ih, iw) = model.patch_embed.patch_size, model.patch_embed.img_size
    if gh != gw or ph != pw or ih != iw or ih != img_size or patch_geometry(img_size, gh) != (ph, 0):
        raise DvtError(f"the exits need square {img_size} px images cut into square patches without padding; "
                       f"this timm ViT takes {ih}x{iw} px in {ph}x{pw} patches ({gh}x{gw} tokens)")
    return gh


def cascade_from_timm(models: Sequence[nn.Module | str], *, grids: Sequence[int] | None = None,
                      feature_reuse: bool = True, relation_reuse: bool = True, img_size: int = 224,
                      in_chans: int = 3, num_classes: int | None = None,
                      pretrained_files: Sequence[str | None] | None = None, drop_path_rate: float = 0.0,
                      drop_rate: float = 0.0) -> Cascade:
    """A DVT cascade whose exit k starts from models[k] (a timm ViT, or a timm model name built on
    grids[k]; pretrained_files[k]: its local weights file). num_classes: the heads' classes (default:
    the ViTs' own)."""
    if pretrained_files is not None and len(pretrained_files) != len(models):
        raise DvtError(f"{len(pretrained_files)} pretrained files for {len(models)} exits")
    if any(isinstance(m, str) for m in models):
        if grids is None or len(grids) != len(models):
            raise DvtError("timm models given by name need one grid each (grids=[...])")
        models = [_timm_vit(m, grid=g, img_size=img_size, num_classes=num_classes, in_chans=in_chans,
                            pretrained_file=(pretrained_files or [None] * len(models))[k]) if isinstance(m, str) else m
                  for k, (m, g) in enumerate(zip(models, grids))]
    if not models:
        raise DvtError("a cascade needs at least one timm model")
    specs = [_spec_of(m) for m in models]
    shapes = {(s.embed_dim, s.depth, s.num_heads, s.mlp_ratio, s.qkv_bias, s.norm_eps) for s in specs}
    if len(shapes) > 1:
        raise DvtError("the exits' ViTs differ in shape (width, depth, heads, MLP ratio, qkv bias or norm eps); "
                       "a DVT cascade repeats one backbone on growing grids")
    found = [_grid_of(m, img_size) for m in models]
    if grids is not None and list(grids) != found:
        raise DvtError(f"grids {list(grids)} asked for, but the ViTs make {found}")
    chans = {m.patch_embed.proj.in_channels for m in models}
    classes = {m.num_classes for m in models}
    if len(chans) != 1 or len(classes) != 1:
        raise DvtError(f"the exits' ViTs take {sorted(chans)} input channels and {sorted(classes)} classes; "
                       "they must agree")
    if num_classes is not None and classes != {num_classes}:
        raise DvtError(f"num_classes={num_classes} but the ViTs have {sorted(classes)}: pass their names to let "
                       "timm build them with new heads, or build them with num_classes yourself")
    cascade = Cascade(spec=specs[-1], grids=found, img_size=img_size, in_chans=chans.pop(),
                      num_classes=classes.pop(), feature_reuse=feature_reuse, relation_reuse=relation_reuse,
                      drop_path_rate=drop_path_rate, drop_rate=drop_rate)
    for exit_, vit in zip(cascade.exits, models):
        _take_weights(exit_, vit.state_dict())
    return cascade


@torch.no_grad()
def _take_weights(exit_: nn.Module, vit: dict[str, torch.Tensor]) -> None:
    """Copy a timm ViT's state dict into one exit: exact where shapes agree; the first D channels of a
    feature-reuse block's norm2 / fc1 (fc1's reused columns zeroed); reuse modules untouched."""
    own = exit_.state_dict()
    missing = [k for k in own if k not in vit and "reuse" not in k]
    if missing:
        raise DvtError(f"the timm ViT lacks {', '.join(missing[:5])}")
    for key, value in vit.items():
        if key not in own:
            continue  # e.g. timm buffers our exit does not have
        target = own[key]
        if target.shape == value.shape:
            target.copy_(value)
        elif key.endswith(("norm2.weight", "norm2.bias")):
            target[: value.shape[0]].copy_(value)  # the reused channels keep LayerNorm's 1 / 0
        elif key.endswith("mlp.fc1.weight"):
            target.zero_()
            target[:, : value.shape[1]].copy_(value)
        else:
            raise DvtError(f"{key}: the ViT has {tuple(value.shape)}, the exit {tuple(target.shape)}")
