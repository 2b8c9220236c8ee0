"""Every model this project builds, by name, as plain data: ViT backbones (the shape of one exit, shared
by every exit of a cascade) and the reference CNNs.

Torch-free on purpose: the config check and the Snakefile read these names when a workflow loads, and
importing torch (with timm) there cost every `snakemake` call about 3 s. dvt.models builds the modules.

Numbers for the T2T-ViT family follow the T2T-ViT paper (their published parameters and GMACs are
checked in tests/test_flops.py against the paper's GFLOPs); DeiT-S follows DeiT. The `vit_*` backbones are ours:
small patch-embedding ViTs that train on a CPU on 28x28 / 32x32 images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dvt.errors import DvtError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    # T2T module with Token-Performers, two conv soft splits (dvt/models/tokenizer.py), or one strided conv
    tokenizer: Literal["t2t", "soft_split", "patch"]
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    norm_eps: float
    pos_embed: Literal["sinusoid", "learned"]  # T2T-ViT uses a fixed table, DeiT learns it
    # Feature reuse: per block LN + MLP embed_dim -> reuse_hidden -> reuse_dim.
    reuse_hidden: int = 128
    reuse_dim: int = 48
    # T2T: width of the Token-Performer layers and their (fixed, T2T-ViT) dropout; soft_split: the
    # channels of the first split's map.
    token_dim: int = 64
    tokenizer_drop: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def _t2t(name: str, dim: int, depth: int, heads: int, mlp_ratio: float) -> BackboneSpec:
    return BackboneSpec(name=name, tokenizer="t2t", embed_dim=dim, depth=depth, num_heads=heads,
                        mlp_ratio=mlp_ratio, qkv_bias=False, norm_eps=1e-5, pos_embed="sinusoid")


def _vit(name: str, dim: int, depth: int, heads: int, mlp_ratio: float, reuse_hidden: int,
         reuse_dim: int, tokenizer: Literal["patch", "soft_split"] = "patch", token_dim: int = 64) -> BackboneSpec:
    return BackboneSpec(name=name, tokenizer=tokenizer, embed_dim=dim, depth=depth, num_heads=heads,
                        mlp_ratio=mlp_ratio, qkv_bias=True, norm_eps=1e-6, pos_embed="learned",
                        reuse_hidden=reuse_hidden, reuse_dim=reuse_dim, token_dim=token_dim)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _t2t("t2t_vit_7", 256, 7, 4, 2.0),
        _t2t("t2t_vit_10", 256, 10, 4, 2.0),
        _t2t("t2t_vit_12", 256, 12, 4, 2.0),
        _t2t("t2t_vit_14", 384, 14, 6, 3.0),
        _t2t("t2t_vit_19", 448, 19, 7, 3.0),
        _t2t("t2t_vit_24", 512, 24, 8, 3.0),
        _vit("deit_small", 384, 12, 6, 4.0, 128, 48),
        # CPU-sized; the reuse width shrinks with the model (the paper's 128 -> 48 is for D >= 256).
        _vit("vit_micro", 64, 4, 4, 2.0, 32, 16),
        _vit("vit_mini", 128, 6, 4, 2.0, 64, 24),
        _vit("vit_tiny", 192, 12, 3, 4.0, 128, 48),
        # vit_micro with two overlapping soft splits instead of one linear patch (dvt/models/tokenizer.py): the
        # default on cluttered Fashion-MNIST, where it reaches 48.9 / 64.4 % at 3x3 / 7x7 after 100k
        # images against 32.6 % (3x3, 48 px) with plain patches.
        _vit("vit_micro_ss", 64, 4, 4, 2.0, 32, 16, tokenizer="soft_split", token_dim=32),
        # vit_micro_ss at other depths: the family of one-exit models at full tokens that Fig. 6 sets DVT
        # against (the paper's T2T-ViT-7/10/12/14/19; configs/fig6.yaml). At 7x7 on 56 px they cost about
        # 0.6, 0.8, 1.5 and 1.9 times vit_micro_ss (4 blocks).
        *(_vit(f"vit_micro_ss_d{depth}", 64, depth, 4, 2.0, 32, 16, tokenizer="soft_split", token_dim=32)
          for depth in (2, 3, 6, 8)),
    )
}


# A CNN's head sees one pooled vector: its single exit is recorded with this grid.
CNN_GRID = 1


@dataclass(frozen=True)
class ConvNetSpec:
    name: str  # ours, as params.yaml names it (runs.<run>.baseline)
    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


CONVNETS: dict[str, ConvNetSpec] = {
    spec.name: spec
    for spec in (
        # ResNet-18 at a quarter of its width (16-32-64-128 channels, 0.7 M parameters): on the 56 px
        # cluttered canvas it costs about what the 7x7 vit_micro_ss does per image in training.
        ConvNetSpec("resnet18_w16", "resnet18", {"channels": (16, 32, 64, 128)}),
        ConvNetSpec("resnet18", "resnet18"),
    )
}


def list_models() -> list[str]:
    return list(BACKBONES)


def get_spec(backbone: str) -> BackboneSpec | ConvNetSpec:
    if backbone in CONVNETS:
        return CONVNETS[backbone]
    if backbone not in BACKBONES:
        raise DvtError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)} (reference CNNs: "
                       f"{', '.join(CONVNETS)})")
    return BACKBONES[backbone]
