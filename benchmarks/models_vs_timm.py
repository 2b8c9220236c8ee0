"""Training throughput of our single-exit ViT against timm's VisionTransformer of the same shape.

Not a test: run it by hand (`python benchmarks/models_vs_timm.py`). One CPU thread, batch 128 of
28x28 one-channel images, dim 64, depth 4, 4 heads, MLP ratio 2, a 7x7 token grid (patch 4); each
step is forward + cross-entropy + backward + AdamW. Prints images per second (median over repeats)
and our/timm ratio, which should be >= 1. Wall-clock and process CPU time are both reported: on a
shared machine the CPU-time figure is less disturbed by other jobs; the ratio is the median of the
per-repeat ratios, each repeat timing both models back to back.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm.models.vision_transformer as tvit
import torch
import torch.nn.functional as F

from dvt.models import create_model


def images_per_second(model: torch.nn.Module, forward, *, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    """(img/s by wall clock, img/s by this process's CPU time)."""
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(forward(model, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    n = steps * batch
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    ours = create_model("vit_micro", grids=(7,), img_size=28, in_chans=1, num_classes=10)
    theirs = tvit.VisionTransformer(img_size=28, patch_size=4, in_chans=1, embed_dim=64, depth=4, num_heads=4,
                                    mlp_ratio=2, num_classes=10)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs, (n_ours, n_theirs)
    candidates = {"dvt vit_micro": (ours, lambda m, x: m(x)[0]), "timm ViT": (theirs, lambda m, x: m(x))}
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, (model, forward) in candidates.items():
            w, c = images_per_second(model, forward, batch=args.batch, steps=args.steps, warmup=args.warmup)
            wall[name].append(w)
            cpu[name].append(c)
    for clock, rates in (("wall", wall), ("cpu", cpu)):
        for name, r in rates.items():
            print(f"{clock:4s} {name:14s} {statistics.median(r):8.1f} img/s  "
                  f"(median of {len(r)}: {', '.join(f'{v:.0f}' for v in r)})")
        ratio = statistics.median(a / b for a, b in zip(rates["dvt vit_micro"], rates["timm ViT"]))
        print(f"{clock:4s} ratio ours/timm = {ratio:.3f} (median of per-repeat ratios)")
    print(f"params: {n_ours} each")

if __name__ == "__main__":
    main()
