"""How the default experiment was chosen: train one model on a cluttered Fashion-MNIST variant, print its test top-1.

Each call trains one model (a one-exit ViT, a DVT cascade or a reference CNN) for a fixed number of
images with the default recipe (AdamW, lr 2e-3 cosine with 5 % warmup, batch 64, label smoothing
0.1, random crop and flip), on one thread, and appends one JSON line to --out: test top-1 per exit,
split by object size (small / large items), training seconds, and the settings. With --logits it
also saves every exit's test and held-out logits (for budget curves, `--curve`).

    python benchmarks/default_design.py --backbone vit_micro_ss --grids 3
    python benchmarks/default_design.py --backbone vit_micro --grids 3          # plain patches
    python benchmarks/default_design.py --backbone resnet18_w16 --grids 1       # the reference CNN
    python benchmarks/default_design.py --backbone vit_micro_ss --grids 3,5,7 --logits l.npz
    python benchmarks/default_design.py --curve l.npz --grids 3,5,7 --match 65.3 --match-gmacs 0.00927

Results and the runs behind the README's design table: benchmarks/results/default_design.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvt.config import ClutteredConfig  # noqa: E402
from dvt.data import cluttered, idx  # noqa: E402
from dvt.data.loading import random_crop_flip  # noqa: E402
from dvt.data.sources import DEBIAN_FASHION_MNIST, FASHION_FILES  # noqa: E402
from dvt.models import create_model  # noqa: E402

HELD_OUT = 3000  # the last train images: never trained on, they fit thresholds for --curve


def load(cfg: ClutteredConfig, cache: Path) -> dict[str, np.ndarray]:
    if not cache.is_file():
        splits = {}
        for split, (images, labels) in FASHION_FILES.items():
            splits[split] = (idx.read_idx(DEBIAN_FASHION_MNIST / images)[..., None],
                             idx.read_idx(DEBIAN_FASHION_MNIST / labels).astype(np.int64))
        out, objects = cluttered.derive(splits, cfg)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, xtr=out["train"][0][..., 0], ytr=out["train"][1], xte=out["test"][0][..., 0],
                 yte=out["test"][1], ote=objects["test"])
        tmp.replace(cache)
    return dict(np.load(cache))


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    cfg = ClutteredConfig(canvas=args.canvas, small_share=args.small_share, small_scale=tuple(args.small_scale),
                          large_scale=tuple(args.large_scale), clutter=args.clutter, fragment=args.fragment)
    key = "_".join(str(v) for v in (cfg.canvas, cfg.small_share, *cfg.small_scale, *cfg.large_scale, cfg.clutter,
                                    cfg.fragment))
    d = load(cfg, Path(args.cache) / f"cluttered_{key}.npz")
    n_train = len(d["ytr"]) - HELD_OUT
    xtr, ytr = torch.from_numpy(d["xtr"][:n_train]).unsqueeze(1), torch.from_numpy(d["ytr"][:n_train])
    mean, std = float(xtr[:5000].float().mean() / 255), float(xtr[:5000].float().std() / 255)
    grids = tuple(int(g) for g in args.grids.split(","))
    torch.manual_seed(args.seed)
    model = create_model(args.backbone, grids=grids, img_size=cfg.canvas, in_chans=1, num_classes=10,
                         feature_reuse=args.reuse, relation_reuse=args.reuse)
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(("cls_token", "pos_embed"))]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith(("cls_token", "pos_embed")))]
    opt = create_optimizer_v2([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                              opt="adamw", lr=args.lr, fused=True)
    steps = args.images // args.batch
    sched = CosineLRScheduler(opt, t_initial=steps, lr_min=1e-5, warmup_t=steps // 20, warmup_lr_init=1e-6,
                              t_in_epochs=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.empty(0, dtype=torch.long)
    model.train()
    tic = time.perf_counter()
    for step in range(steps):
        if len(order) < args.batch:
            order = torch.cat([order, torch.randperm(n_train, generator=gen)])
        batch, order = order[:args.batch], order[args.batch:]
        x = (random_crop_flip(xtr[batch].float().div_(255)) - mean) / std
        loss = sum(loss_fn(o, ytr[batch]) for o in model(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(step + 1)
        if step % 200 == 0:
            print(f"step {step}/{steps} loss {loss.item():.3f} {time.perf_counter() - tic:.0f} s", flush=True)
    seconds = time.perf_counter() - tic

    @torch.inference_mode()
    def logits(images: np.ndarray) -> np.ndarray:  # (n, K, classes)
        model.eval()
        x = torch.from_numpy(images).unsqueeze(1)
        return torch.cat([torch.stack(model((x[s:s + 500].float() / 255 - mean) / std), 1)
                          for s in range(0, len(x), 500)]).numpy()

    test = logits(d["xte"])
    hits = test.argmax(-1) == d["yte"][:, None]  # (n, K)
    small = d["ote"][:, 0] <= cfg.small_scale[1]
    result = {"backbone": args.backbone, "grids": list(grids), "reuse": args.reuse, "images": args.images,
              "seed": args.seed, "data": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
              "top1": [round(100 * float(h), 2) for h in hits.mean(0)],
              "top1_small_items": [round(100 * float(h), 2) for h in hits[small].mean(0)],
              "top1_large_items": [round(100 * float(h), 2) for h in hits[~small].mean(0)],
              "train_seconds": round(seconds, 1), "torch": torch.__version__}
    print(json.dumps(result), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    if args.logits:
        np.savez(args.logits, test=test, ytest=d["yte"], ote=d["ote"], cal=logits(d["xtr"][n_train:]),
                 ycal=d["ytr"][n_train:])


def curve(args: argparse.Namespace) -> None:
    """DVT's budgeted curve from saved logits (thresholds on the held-out images) and the cost it needs
    to match a given top-1."""
    from dvt import thresholds
    from dvt.flops import count_cascade

    f = np.load(args.curve)
    grids = tuple(int(g) for g in args.grids.split(","))

    def confidence(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).max(-1)

    F = np.array(count_cascade(create_model(args.backbone, grids=grids, img_size=args.canvas, in_chans=1,
                                            num_classes=10)).cumulative_gmacs)
    correct = f["test"].argmax(-1) == f["ytest"][:, None]
    T = thresholds.fit_thresholds(confidence(f["cal"]), thresholds.budget_fractions(len(grids)))
    ev = thresholds.evaluate(confidence(f["test"]), correct, F, T)
    g = np.concatenate([ev.gmacs, F[[0, -1]]])
    a = np.concatenate([ev.accuracy, 100 * correct.mean(0)[[0, -1]]])
    out = {"exits_top1": [round(float(x), 2) for x in 100 * correct.mean(0)], "cumulative_gmacs": F.tolist(),
           "best_top1": round(float(a.max()), 2)}
    if args.match is not None:
        need = thresholds.gmacs_for_accuracy(g, a, args.match)
        out.update({"match_top1": args.match, "gmacs_needed": need,
                    "share_of": None if args.match_gmacs is None else need / args.match_gmacs})
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="vit_micro_ss")
    p.add_argument("--grids", default="3")
    p.add_argument("--reuse", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--canvas", type=int, default=56)
    p.add_argument("--small-share", type=float, default=0.25)
    p.add_argument("--small-scale", type=int, nargs=2, default=[8, 16])
    p.add_argument("--large-scale", type=int, nargs=2, default=[40, 56])
    p.add_argument("--clutter", type=int, default=2)
    p.add_argument("--fragment", type=int, default=9)
    p.add_argument("--cache", default="/tmp")
    p.add_argument("--out", default="default_design.jsonl")
    p.add_argument("--logits", default=None)
    p.add_argument("--curve", default=None, help="saved logits: print the budgeted curve instead of training")
    p.add_argument("--match", type=float, default=None)
    p.add_argument("--match-gmacs", type=float, default=None)
    args = p.parse_args()
    curve(args) if args.curve else train(args)


if __name__ == "__main__":
    main()
