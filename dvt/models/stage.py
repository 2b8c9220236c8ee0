"""One exit of the cascade: a complete ViT on one token grid, plus the modules that read the
previous exit's tensors.

Parameter names follow timm / the official DVT checkpoints (tokens_to_token | patch_embed,
cls_token, pos_embed, blocks.i.*, norm, head); the reuse modules are `blocks.i.feature_reuse`
(official `feature_resuse_mlp`) and `relation_reuse` (official `relation_reuse_conv`). A stage
without reuse has exactly the state dict of a timm ViT of the same shape.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from dvt.backbones import BackboneSpec
from dvt.models.block import Block
from dvt.models.reuse import (
    FeatureReuse,
    RelationReuse,
    can_run_together,
    feature_reuse_together,
)
from dvt.models.tokenizer import PatchEmbed, SoftSplitEmbed, T2TModule, sinusoid_table


class StageOutput(NamedTuple):
    logits: Tensor  # (B, num_classes)
    features: Tensor | None  # (B, N, D): last block output before the final norm, if asked for
    relations: Tensor | None  # (B, L*H, N, N): every layer's pre-softmax logits, layer-major, if asked for


class Stage(nn.Module):
    def __init__(self, *, spec: BackboneSpec, grid: int, img_size: int, in_chans: int, num_classes: int,
                 upstream_grid: int | None = None, feature_reuse: bool = False, relation_reuse: bool = False,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        if upstream_grid is None and (feature_reuse or relation_reuse):
            raise ValueError("reuse needs an upstream exit")
        self.grid = grid
        self.num_tokens = grid * grid + 1
        self.depth = spec.depth
        D = spec.embed_dim
        self.tokenizer_name = "tokens_to_token" if spec.tokenizer == "t2t" else "patch_embed"
        if spec.tokenizer == "t2t":
            self.tokens_to_token = T2TModule(img_size=img_size, grid=grid, in_chans=in_chans, embed_dim=D,
                                             token_dim=spec.token_dim, drop=spec.tokenizer_drop)
        elif spec.tokenizer == "soft_split":
            self.patch_embed = SoftSplitEmbed(img_size=img_size, grid=grid, in_chans=in_chans, embed_dim=D,
                                              token_dim=spec.token_dim)
        else:
            self.patch_embed = PatchEmbed(img_size=img_size, grid=grid, in_chans=in_chans, embed_dim=D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if spec.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, D))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", sinusoid_table(self.num_tokens, D))
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic depth grows linearly 0 -> rate over this exit's own blocks.
        rates = [drop_path_rate * i / max(spec.depth - 1, 1) for i in range(spec.depth)]
        self.blocks = nn.ModuleList(
            Block(dim=D, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias,
                  norm_eps=spec.norm_eps, drop=drop_rate, drop_path=rate,
                  feature_reuse=FeatureReuse(dim=D, hidden=spec.reuse_hidden, out=spec.reuse_dim,
                                             src_grid=upstream_grid, dst_grid=grid, norm_eps=spec.norm_eps,
                                             drop=drop_rate) if feature_reuse else None)
            for rate in rates)
        self.relation_reuse = (RelationReuse(depth=spec.depth, num_heads=spec.num_heads, src_grid=upstream_grid,
                                             dst_grid=grid) if relation_reuse else None)
        self.norm = nn.LayerNorm(D, eps=spec.norm_eps)
        self.head = nn.Linear(D, num_classes)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @property
    def has_feature_reuse(self) -> bool:
        return self.blocks[0].feature_reuse is not None

    @property
    def has_relation_reuse(self) -> bool:
        return self.relation_reuse is not None

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, N, D): tokens, cls prepended, position table added."""
        x = getattr(self, self.tokenizer_name)(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.pos_drop(x)

    def forward(self, x: Tensor, *, features: Tensor | None = None, relations: Tensor | None = None,
                keep_features: bool = False, keep_relations: bool = False) -> StageOutput:
        """x (B, C, S, S) images; features (B, N_u, D) and relations (B, L*H, N_u, N_u) from the
        previous exit, required iff this exit reuses them. keep_* ask for this exit's own tensors for
        the next exit; keep_relations switches the blocks to the explicit (non-fused) attention."""
        if self.has_feature_reuse and features is None:
            raise ValueError(f"the {self.grid}x{self.grid} exit reuses features but got none")
        if self.relation_reuse is not None and relations is None:
            raise ValueError(f"the {self.grid}x{self.grid} exit reuses relations but got none")
        x = self.embed(x)
        biases = self.relation_reuse(relations) if self.relation_reuse is not None else (None,) * self.depth
        modules = [block.feature_reuse for block in self.blocks]
        reused = feature_reuse_together(modules, features) if can_run_together(modules) else (None,) * self.depth
        kept: list[Tensor] = []
        for block, bias, E in zip(self.blocks, biases, reused):
            # Each bias is used once, by its own layer, so its memory can take that layer's logits.
            x, logits = block(x, upstream=features, reused=E, attn_bias=bias, overwrite_bias=True,
                              need_logits=keep_relations)
            if logits is not None:
                kept.append(logits)
        # LayerNorm is per token, so normalising only the cls token gives the same logits cheaper.
        out = self.head(self.norm(x[:, 0]))
        return StageOutput(out, x if keep_features else None, torch.cat(kept, dim=1) if keep_relations else None)


def _init_weights(module: nn.Module) -> None:
    """timm/DeiT/T2T-ViT init: truncated normal (std .02) linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
