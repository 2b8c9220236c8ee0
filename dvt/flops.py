"""Multiply-adds and parameters of every exit of a cascade, counted by fvcore (the `dvt flops` stage writes them).

Conventions are fvcore's, as in the paper: one multiply-add = one flop (so "GFLOPs" are GMACs),
LayerNorm = 5 x numel, nearest upsampling = output numel, adaptive average pooling = input numel;
element-wise ops (add, GELU, softmax, exp, ...) are free. We add a rule for the one costly op fvcore
does not know, fused attention (`scaled_dot_product_attention` = its two matmuls, exactly what the
explicit path is charged), and one it knows only unbatched (`baddbmm`, the explicit path's
q k^T + bias, charged its matmul as fvcore charges addmm), and refuse to report a number if any
other unknown op turns up, so no cost is dropped silently.

Per exit k: the stage cost is exit k run on a 1-image batch given exit k-1's state, its reuse
modules included; the cumulative cost (the cost of exiting at k, as in the official checkpoints'
`flops` list) is the sum of stages 1..k. Parameters count trainable tensors only: T2T's fixed
position table and performer random features are buffers, as the published counts assume.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    # fvcore scripts a loss function at import time, which recent torch flags as deprecated.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from dvt.models import Cascade, ReuseState
from dvt.models.reuse import reference_reuse

# Ops fvcore has no rule for that cost no multiply-adds by its conventions (element-wise, reductions
# by addition, copies). Anything else unknown is an error.
FREE_OPS = frozenset({
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div", "aten::div_",
    "aten::neg", "aten::exp", "aten::exp_", "aten::amax", "aten::pow", "aten::sum", "aten::gelu", "aten::softmax",
    "aten::im2col",
    "aten::dropout", "aten::feature_dropout", "aten::pad", "aten::expand_as", "aten::repeat",
    # The reference CNN's pooling and activations: comparisons only, no multiply-adds (fvcore's convention).
    "aten::max_pool2d", "aten::relu", "aten::relu_",
})


def _sdpa_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """q (..., N, d) k (..., M, d) v (..., M, e): q k^T is N*M*d and (attn) v is N*M*e per batch-head."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _baddbmm_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """bias + b1 @ b2 with b1 (B, n, k), b2 (B, k, m): the batched matmul's B*n*k*m, the add free (as
    fvcore charges addmm)."""
    (batch, n, k), m = get_shape(inputs[1]), get_shape(inputs[2])[-1]
    return batch * n * k * m


@dataclass(frozen=True)
class ExitCost:
    grid: int
    tokens: int  # patch tokens + cls
    stage_gmacs: float
    cumulative_gmacs: float
    params: int


@dataclass(frozen=True)
class CascadeCost:
    exits: tuple[ExitCost, ...]

    @property
    def stage_gmacs(self) -> list[float]:
        return [e.stage_gmacs for e in self.exits]

    @property
    def cumulative_gmacs(self) -> list[float]:
        return [e.cumulative_gmacs for e in self.exits]

    @property
    def params(self) -> list[int]:
        return [e.params for e in self.exits]

    @property
    def total_params(self) -> int:
        return sum(self.params)

    @property
    def total_gmacs(self) -> float:
        return self.exits[-1].cumulative_gmacs


class _ExitRunner(nn.Module):
    """Exit k as a module of plain tensors, for tracing: (x, [features], [relations]) -> logits.

    The state exit k hands on is kept from the traced run itself, so counting a cascade runs every
    exit once."""

    def __init__(self, model: Cascade, k: int, *, features: bool, relations: bool) -> None:
        super().__init__()
        self.model, self.k, self.features, self.relations = model, k, features, relations
        self.state: ReuseState | None = None

    def forward(self, x: Tensor, *reused: Tensor) -> Tensor:
        it = iter(reused)
        state = None
        if self.k:
            state = ReuseState(exit=self.k - 1, features=next(it) if self.features else None,
                               relations=next(it) if self.relations else None)
        logits, self.state = self.model.forward_exit(self.k, x, state)
        return logits


def count_flops(module: nn.Module, inputs: tuple[Tensor, ...]) -> int:
    """fvcore MACs of module(*inputs); raises if an op with no rule and possible cost was met.

    The reuse modules are traced with the official ops (`reference_reuse`): the models apply R as a
    matrix, but the paper charges it as nearest upsampling + adaptive pooling."""
    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
    analysis.set_op_handle("aten::baddbmm", _baddbmm_flops)
    analysis.set_op_handle("aten::baddbmm_", _baddbmm_flops)  # the same, accumulated into its input
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with reference_reuse():
        total = analysis.total()
        unknown = sorted(set(analysis.unsupported_ops()) - FREE_OPS)
    if unknown:
        raise RuntimeError(f"fvcore has no FLOP rule for {', '.join(unknown)}; add one to dvt.flops")
    return total


@torch.no_grad()
def count_cascade(model: Cascade, img_size: int | None = None, in_chans: int | None = None) -> CascadeCost:
    """Stage and cumulative GMACs and parameters of every exit, on one image."""
    img_size = img_size or model.img_size
    in_chans = in_chans or model.in_chans
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.randn(1, in_chans, img_size, img_size, dtype=param.dtype, device=param.device)
        exits, state, cumulative = [], None, 0.0
        for k, stage in enumerate(model.exits):
            reused = () if state is None else tuple(
                t for t, used in ((state.features, stage.has_feature_reuse), (state.relations, stage.has_relation_reuse))
                if used)
            runner = _ExitRunner(model, k, features=stage.has_feature_reuse, relations=stage.has_relation_reuse)
            gmacs = count_flops(runner, (x, *reused)) / 1e9
            cumulative += gmacs
            exits.append(ExitCost(grid=stage.grid, tokens=stage.num_tokens, stage_gmacs=gmacs,
                                  cumulative_gmacs=cumulative, params=sum(p.numel() for p in stage.parameters())))
            state = runner.state
        return CascadeCost(exits=tuple(exits))
    finally:
        model.train(was_training)
