"""The DVT cascade: exits on growing token grids, each optionally reusing its predecessor.

Exits share no weights. Exit k (k >= 1) reads only exit k-1: its last features (feature reuse) and
its attention logits (relation reuse). Two ways to run it:

* `model(x)` -> list of per-exit logits, every exit on every image (training, logit collection);
* `model.forward_exit(k, x, state)` -> (logits, state) one exit at a time (real early exit):

      state = None
      for k in range(model.num_exits):
          logits, state = model.forward_exit(k, x, state)
          keep = confidence(logits) < threshold[k]          # the samples that go on
          x, state = x[keep], state.select(keep)

  Both paths run the same code, so they give identical logits, also on any subset of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor, nn

from dvt.backbones import BackboneSpec, ConvNetSpec
from dvt.grids import grows
from dvt.models.convnet import CNN_GRID, ConvNetExit
from dvt.models.stage import Stage


@dataclass(frozen=True)
class ReuseState:
    """What exit `exit` hands to exit `exit + 1`: only the tensors that exit actually reuses."""

    exit: int
    features: Tensor | None = None  # (B, N, D) last block output before the final norm
    relations: Tensor | None = None  # (B, L*H, N, N) pre-softmax logits of all layers, layer-major

    def select(self, index: Tensor | slice | Sequence[int]) -> ReuseState:
        """Keep a subset of rows (a boolean mask, indices or a slice over the batch)."""
        return ReuseState(exit=self.exit,
                          features=None if self.features is None else self.features[index],
                          relations=None if self.relations is None else self.relations[index])

    __getitem__ = select

    @property
    def batch_size(self) -> int | None:
        t = self.features if self.features is not None else self.relations
        return None if t is None else t.shape[0]


class Cascade(nn.Module):
    def __init__(self, *, spec: BackboneSpec | ConvNetSpec, grids: Sequence[int], img_size: int, in_chans: int,
                 num_classes: int, feature_reuse: bool = True, relation_reuse: bool = True,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        grids = tuple(grids)
        if not grows(grids):
            raise ValueError(f"grids must be a non-empty, strictly growing sequence, got {list(grids)}")
        self.spec = spec
        self.grids = grids
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        if isinstance(spec, ConvNetSpec):  # a reference CNN: one exit on the whole image
            if grids != (CNN_GRID,):
                raise ValueError(f"a CNN has one exit with grid {CNN_GRID}, got grids {list(grids)}")
            self.exits = nn.ModuleList([ConvNetExit(spec=spec, in_chans=in_chans, num_classes=num_classes,
                                                    drop_rate=drop_rate, drop_path_rate=drop_path_rate)])
            return
        # Exit 0 has nobody to reuse from: a one-exit cascade is a plain ViT.
        self.exits = nn.ModuleList(
            Stage(spec=spec, grid=g, img_size=img_size, in_chans=in_chans, num_classes=num_classes,
                  upstream_grid=grids[k - 1] if k else None, feature_reuse=feature_reuse and k > 0,
                  relation_reuse=relation_reuse and k > 0, drop_path_rate=drop_path_rate, drop_rate=drop_rate)
            for k, g in enumerate(grids))

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B, C, S, S) -> [logits (B, num_classes)] per exit, every exit on every image."""
        outputs, state = [], None
        for k in range(self.num_exits):
            logits, state = self.forward_exit(k, x, state)
            outputs.append(logits)
        return outputs

    def forward_exit(self, k: int, x: Tensor, state: ReuseState | None = None) -> tuple[Tensor, ReuseState]:
        """Run exit k on x given what exit k-1 handed on; return its logits and what exit k+1 needs."""
        if not 0 <= k < self.num_exits:
            raise IndexError(f"exit {k} out of range for a {self.num_exits}-exit cascade")
        if x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            # Another size would silently give another token grid (or fail deep inside).
            raise ValueError(f"expected images of shape (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}")
        stage: Stage = self.exits[k]
        if stage.has_feature_reuse or stage.has_relation_reuse:
            if state is None or state.exit != k - 1:
                raise ValueError(f"exit {k} reuses exit {k - 1}; pass the state that forward_exit({k - 1}) returned")
            if state.batch_size != x.shape[0]:
                raise ValueError(f"state has {state.batch_size} rows but x has {x.shape[0]}; select the same rows")
        following: Stage | None = self.exits[k + 1] if k + 1 < self.num_exits else None
        out = stage(x,
                    features=state.features if stage.has_feature_reuse else None,
                    relations=state.relations if stage.has_relation_reuse else None,
                    keep_features=following is not None and following.has_feature_reuse,
                    keep_relations=following is not None and following.has_relation_reuse)
        return out.logits, ReuseState(exit=k, features=out.features, relations=out.relations)
