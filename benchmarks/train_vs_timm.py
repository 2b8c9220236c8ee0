"""Training throughput of our single-exit ViT against timm's VisionTransformer, through `dvt train`.

Both models go through exactly the same loop (dvt.stages.train.run: data, loss, AdamW, scheduler), on the
same synthetic 28x28 one-channel images, one thread; only the model differs. Prints images/s of
each (median over epochs after the first) and the ratio ours / timm.

    .venv/bin/python benchmarks/train_vs_timm.py [--epochs 4] [--images 6400] [--grid 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import timm
import torch
from torch import nn

import dvt.stages.train
from dvt.config import from_dict
from dvt.models import get_spec
from dvt.stages import fetch


class TimmAsCascade(nn.Module):
    """timm's ViT behind the Cascade interface the trainer uses (a list of per-exit logits)."""

    def __init__(self, vit: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.vit, self.num_classes = vit, num_classes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.vit(x)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=6400)
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--backbone", default="vit_micro")
    args = parser.parse_args()
    spec = get_spec(args.backbone)
    size = 28
    with tempfile.TemporaryDirectory() as tmp:
        config = from_dict({
            "data": {"dataset": "synthetic", "root": f"{tmp}/data", "calibration_size": 256,
                     "synthetic": {"train_size": args.images + 256, "test_size": 16, "image_size": size}},
            "model": {"backbone": args.backbone, "drop_path": 0.1},
            "runs": {"ours": {"grids": [args.grid]}, "timm": {"grids": [args.grid]}},
            "train": {"epochs": args.epochs, "batch_size": 128, "warmup_epochs": 0, "threads": 1},
            "runs_dir": f"{tmp}/runs"})
        fetch.run(config)
        patch = size // args.grid
        real = dvt.stages.train.model_for_run

        def build(cfg, run):
            if run == "ours":
                return real(cfg, run)
            vit = timm.models.vision_transformer.VisionTransformer(
                img_size=size, patch_size=patch, in_chans=1, num_classes=10, embed_dim=spec.embed_dim,
                depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias,
                drop_path_rate=0.1)
            return TimmAsCascade(vit, 10)

        dvt.stages.train.model_for_run = build
        torch.set_num_threads(1)
        speed = {}
        for run in ("timm", "ours"):
            dvt.stages.train.run(config, run=run)
            log = (Path(tmp) / "runs" / run / "train_log.csv").read_text().splitlines()
            col = log[0].split(",").index("images_per_s")
            speed[run] = statistics.median(float(r.split(",")[col]) for r in log[2:])
    print(f"{args.backbone} at {args.grid}x{args.grid} tokens, batch 128, 1 thread, torch {torch.__version__}")
    print(f"timm VisionTransformer: {speed['timm']:.0f} img/s")
    print(f"dvt single exit:        {speed['ours']:.0f} img/s")
    print(f"ratio ours / timm:      {speed['ours'] / speed['timm']:.3f}")


if __name__ == "__main__":
    main()
