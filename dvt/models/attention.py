"""Multi-head self-attention that can take an additive logit bias and hand its logits on.

DVT's relationship reuse needs two things a plain ViT attention does not: a bias added to
the pre-softmax logits of a downstream exit, and the logits themselves (bias included) from every
layer of an exit whose successor reuses them. The logits need the explicit path (q k^T, softmax,
times v); otherwise we take whichever path is faster, the explicit one or the fused
`F.scaled_dot_product_attention` (a bias goes in as a float `attn_mask`). On the GPU that is the fused
kernel; on the CPU it wins only on long sequences (dvt.models.cpu_paths). A bias that is the
caller's own temporary (relation reuse in inference) takes the logits in place, saving a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dvt.models import cpu_paths


def softmax_rows(x: Tensor) -> Tensor:
    """softmax over the last dim; on the CPU (fast paths on), rows shorter than SOFTMAX_SHORT_ROW by hand."""
    if not cpu_paths.applies(x) or x.shape[-1] >= cpu_paths.SOFTMAX_SHORT_ROW:
        return x.softmax(dim=-1)
    # Shifting by the row max keeps exp finite; softmax does not depend on the shift, so no gradient
    # needs to flow through it.
    e = x - x.detach().amax(dim=-1, keepdim=True)
    if not torch.is_grad_enabled() or not x.requires_grad:
        e = e.exp_()  # e is our own temporary: no autograd graph to protect
        return e.div_(e.sum(dim=-1, keepdim=True))
    e = e.exp()
    return e / e.sum(dim=-1, keepdim=True)


def use_fused_kernel(*, device: torch.device, tokens: int, bias: bool, grad: bool, bias_grad: bool,
                     bias_in_place: bool = False) -> bool:
    """Whether attention over `tokens` tokens is faster fused than explicit (logits not needed): always
    on a GPU; on the CPU from the token counts of dvt.models.cpu_paths (with its switch on)."""
    if device.type != "cpu" or not cpu_paths.cpu_fast_paths():
        return True
    if bias_grad:
        return False
    if grad:
        least = cpu_paths.FUSED_MIN_TOKENS_TRAINING
    elif bias:
        least = cpu_paths.FUSED_MIN_TOKENS_BIAS_IN_PLACE if bias_in_place else cpu_paths.FUSED_MIN_TOKENS_WITH_BIAS
    else:
        least = cpu_paths.FUSED_MIN_TOKENS_INFERENCE
    return tokens >= least


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

    def forward(self, x: Tensor, *, bias: Tensor | None = None, overwrite_bias: bool = False,
                need_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, N, D), bias (B, H, N, N) or None -> (out (B, N, D), logits (B, H, N, N) or None).

        The returned logits are q k^T / sqrt(d_h) + bias, i.e. exactly what went into the softmax,
        so a later exit reuses what this exit actually attended with. overwrite_bias: the
        bias is the caller's temporary, so the explicit path may add q k^T into it in place (no
        autograd then) instead of copying it into a new logits tensor.
        """
        B, N, D = x.shape
        # (B, N, 3D) -> 3 x (B, H, N, d_h)
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias_grad = bias is not None and bias.requires_grad
        in_place = overwrite_bias and bias is not None and bias.is_contiguous() and not torch.is_grad_enabled()
        if need_logits or not use_fused_kernel(device=x.device, tokens=N, bias=bias is not None,
                                               grad=q.requires_grad, bias_grad=bias_grad, bias_in_place=in_place):
            H = self.num_heads
            qh, kh = q.reshape(B * H, N, self.head_dim), k.reshape(B * H, N, self.head_dim)
            if bias is None:
                logits = torch.bmm(qh, kh.transpose(1, 2)).mul_(self.scale).view(B, H, N, N)
            elif in_place:  # bias += scale * q k^T, one GEMM
                logits = bias.view(B * H, N, N).baddbmm_(qh, kh.transpose(1, 2), alpha=self.scale).view(B, H, N, N)
            else:  # scale * q k^T + bias in one GEMM
                logits = torch.baddbmm(bias.reshape(B * H, N, N), qh, kh.transpose(1, 2), alpha=self.scale)
                logits = logits.view(B, H, N, N)
            out = softmax_rows(logits) @ v
        else:
            logits = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, D)))
        return out, logits if need_logits else None
