"""Pre-norm Transformer block with DVT's optional feature-reuse input."""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from dvt.models.attention import Attention
from dvt.models.reuse import FeatureReuse


class Block(nn.Module):
    """x' = x + DropPath(Attn(LN1(x)));  x_out = x' + DropPath(MLP(LN2([x' ; E]))).

    Without feature reuse E is absent and this is the timm/DeiT block (same parameter names). With
    it, E (B, N, r) is this block's own transform of the upstream exit's last features; norm2 and
    fc1 then see D + r channels, while the residual stays on the D channels.
    """

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float,
                 drop: float = 0.0, drop_path: float = 0.0, feature_reuse: FeatureReuse | None = None) -> None:
        super().__init__()
        extra = feature_reuse.out_dim if feature_reuse is not None else 0
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim + extra, eps=norm_eps)
        self.mlp = Mlp(dim + extra, int(dim * mlp_ratio), dim, drop=drop)
        self.feature_reuse = feature_reuse

    def forward(self, x: Tensor, *, upstream: Tensor | None = None, reused: Tensor | None = None,
                attn_bias: Tensor | None = None, overwrite_bias: bool = False,
                need_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, N, D); upstream (B, N_u, D) features of the previous exit, or reused (B, N, r) = this
        block's feature_reuse(upstream) computed by the caller (one of the two iff this block has
        feature reuse); attn_bias (B, H, N, N), which the attention may overwrite if overwrite_bias.
        Returns (x_out (B, N, D), logits (B, H, N, N) or None)."""
        y, logits = self.attn(self.norm1(x), bias=attn_bias, overwrite_bias=overwrite_bias, need_logits=need_logits)
        x = x + self.drop_path(y)
        if self.feature_reuse is None:
            h = x
        else:
            h = torch.cat([x, reused if reused is not None else self.feature_reuse(upstream)], dim=-1)
        return x + self.drop_path(self.mlp(self.norm2(h))), logits
