"""Token-Performer: the linear-attention layer inside the T2T tokenizer.

Softmax attention over the thousands of soft-split tokens (3136 at the 14x14 exit) would dominate
the cost, so T2T-ViT approximates the softmax kernel with m positive random features
(Performer/FAVOR+): phi(x) = exp(w x - |x|^2 / 2) / sqrt(m), attention = phi(Q) (phi(K)^T V) / norm.
The m x e random matrix `w` is drawn once (orthogonal rows scaled by sqrt(m)) and never trained; it
lives in the state dict so a checkpoint fixes it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TokenPerformer(nn.Module):
    """(B, T, dim) -> (B, T, emb): LN, one-head performer attention with a residual on v (not on the
    input, whose width differs), then LN + MLP emb -> emb -> emb with a residual. Parameter names
    (kqv, proj, norm1, norm2, mlp.0, mlp.2, w) follow the T2T-ViT / DVT checkpoints."""

    def __init__(self, *, dim: int, emb: int = 64, kernel_ratio: float = 0.5, drop: float = 0.1) -> None:
        super().__init__()
        self.emb = emb
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * emb)
        self.proj = nn.Linear(emb, emb)
        self.dp = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(emb)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb), nn.Dropout(drop))
        self.m = int(emb * kernel_ratio)
        self.epsilon = 1e-8  # keeps the normaliser away from zero
        self.register_buffer("w", nn.init.orthogonal_(torch.empty(self.m, emb)) * math.sqrt(self.m))

    def _features(self, x: Tensor) -> Tensor:
        """Positive random features (B, T, e) -> (B, T, m)."""
        half_sq = (x * x).sum(dim=-1, keepdim=True) / 2
        return torch.exp(x @ self.w.t() - half_sq) / math.sqrt(self.m)

    def forward(self, x: Tensor) -> Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.emb, dim=-1)  # 3 x (B, T, e)
        if v.dtype in (torch.float16, torch.bfloat16):
            # exp() of the random projections overflows half precision; T2T-ViT also runs this in fp32.
            with torch.autocast(device_type=v.device.type, enabled=False):
                y = self._attend(k.float(), q.float(), v.float()).to(v.dtype)
        else:
            y = self._attend(k, q, v)
        x = v + self.dp(self.proj(y))
        return x + self.mlp(self.norm2(x))

    def _attend(self, k: Tensor, q: Tensor, v: Tensor) -> Tensor:
        kp, qp = self._features(k), self._features(q)  # (B, T, m)
        norm = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, m) @ (B, m, 1) -> (B, T, 1)
        kv = v.transpose(1, 2) @ kp  # (B, e, T) @ (B, T, m) -> (B, e, m)
        return (qp @ kv.transpose(1, 2)) / (norm + self.epsilon)  # (B, T, e)
