"""Multi-head self-attention that can take an additive logit bias and hand its logits on.

DVT's relationship reuse (spec §3) needs two things a plain ViT attention does not: a bias added to
the pre-softmax logits of a downstream exit, and the logits themselves (bias included) from every
layer of an exit whose successor reuses them. When the logits are not needed we use the fused
`F.scaled_dot_product_attention` (the bias goes in as a float `attn_mask`, which SDPA adds to the
scaled logits and back-propagates through); only when they are needed do we materialise them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        # Names qkv / proj match timm and the official DVT checkpoints.
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, *, bias: Tensor | None = None, need_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, N, D), bias (B, H, N, N) or None -> (out (B, N, D), logits (B, H, N, N) or None).

        The returned logits are q k^T / sqrt(d_h) + bias, i.e. exactly what went into the softmax,
        so a later exit reuses what this exit actually attended with (spec §3).
        """
        B, N, D = x.shape
        # (B, N, 3D) -> 3 x (B, H, N, d_h)
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if need_logits:
            logits = (q @ k.transpose(-2, -1)) * self.scale
            if bias is not None:
                logits = logits + bias
            out = logits.softmax(dim=-1) @ v
        else:
            logits = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, D)))
        return out, logits
