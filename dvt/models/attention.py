"""Multi-head self-attention that can take an additive logit bias and hand its logits on.

DVT's relationship reuse (spec §3) needs two things a plain ViT attention does not: a bias added to
the pre-softmax logits of a downstream exit, and the logits themselves (bias included) from every
layer of an exit whose successor reuses them. When the logits are not needed we use the fused
`F.scaled_dot_product_attention` (a bias goes in as a float `attn_mask`). We materialise the logits
when they are needed, and also when a bias needs a gradient: SDPA then falls back to its math path
on the CPU, which costs more than ours (among other things it scans the whole mask for fully masked
rows); profiled on the default cascade, a 64-image training step went from 278 to 209 ms of CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# PyTorch's CPU softmax vectorises along each row, a full vector register at a time (16 floats with
# AVX-512); rows shorter than that take a path about 3.5x slower than exp + sum over the same tensor
# (measured on this machine: 0.96 vs 0.27 ms for the (128, 4, 10, 10) logits of a 3x3 exit).
SHORT_ROW = 16


def softmax_rows(x: Tensor) -> Tensor:
    """softmax over the last dim; on the CPU, rows shorter than SHORT_ROW are done by hand."""
    if x.device.type != "cpu" or x.shape[-1] >= SHORT_ROW:
        return x.softmax(dim=-1)
    # Shifting by the row max keeps exp finite; softmax does not depend on the shift, so no gradient
    # needs to flow through it.
    e = x - x.detach().amax(dim=-1, keepdim=True)
    if not torch.is_grad_enabled() or not x.requires_grad:
        e = e.exp_()  # e is our own temporary: no autograd graph to protect
        return e.div_(e.sum(dim=-1, keepdim=True))
    e = e.exp()
    return e / e.sum(dim=-1, keepdim=True)


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
        if need_logits or (bias is not None and bias.requires_grad and x.device.type == "cpu"):
            H = self.num_heads
            qh, kh = q.reshape(B * H, N, self.head_dim), k.reshape(B * H, N, self.head_dim)
            if bias is None:
                logits = torch.bmm(qh, kh.transpose(1, 2)).mul_(self.scale).view(B, H, N, N)
            else:  # scale * q k^T + bias in one GEMM
                logits = torch.baddbmm(bias.reshape(B * H, N, N), qh, kh.transpose(1, 2), alpha=self.scale)
                logits = logits.view(B, H, N, N)
            out = softmax_rows(logits) @ v
        else:
            logits = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, D)))
        return out, logits if need_logits else None
