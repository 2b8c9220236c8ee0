"""`dvt train --run R`: joint training of every exit of a run (paper §4).

The loss is the plain sum of the exits' cross-entropies (weights 1:1:1, nothing detached), so a
one-exit run is the ordinary single-token-count baseline of Table 1. AdamW (or SGD for fine-tuning)
without weight decay on norms, biases, tokens and position embeddings; warmup + cosine (+ cooldown)
stepped per update; label smoothing, drop-path, and optionally mixup/cutmix, RandAugment, random
erasing, EMA and gradient clipping, all from timm.

The training state is written to runs/R/seed<S>/resume.pt at the end of every epoch; when the last
epoch ends it is written to runs/R/seed<S>/checkpoint.pt and resume.pt goes, so checkpoint.pt always
means "finished". Each epoch is also logged to train_log.csv and, for `dvc plots` and `dvc exp show`,
to DVCLive's files in live/ (dvt.live). checkpoint.pt holds no wall-clock times (they go to
train_log.csv and train.json): later stages depend on its hash, which retraining bit for bit leaves
unchanged.
A rerun resumes from resume.pt (same settings) and ends with exactly the weights of an uninterrupted
run, because model, optimiser, scheduler, EMA and every random generator are restored. resume.pt is
not a declared pipeline output on purpose: DVC and Snakemake delete a stage's declared outputs before
re-running it, and an interrupted job must still find its last epoch.

With `--processes N` (dvt.distributed starts them through torchrun) or under a torchrun started by
hand, N processes train with DDP on the global batches of one process (dvt.data.shards), each on an
equal slice of train.batch_size, so the averaged gradient is the one-process gradient up to float
rounding. Each rank draws augmentation and drop-path from its own streams (rank 0 from the one
process's). Rank 0 holds the lock, evaluates and writes every file; the logged losses are the global
batch's; resume.pt keeps every rank's random states.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dvt import checkpoint, layout, live
from dvt.atomic import atomic_path, sweep, write_json
from dvt.config import Config
from dvt.data.loading import load_split, make_loader
from dvt.data.shards import ShardedBatches, seed_rank, seed_worker_of_rank
from dvt.distributed import Distributed, check_split
from dvt.errors import DvtError
from dvt.inference import autocast, pick_device, top1_per_exit
from dvt.lock import exclusive
from dvt.run_models import model_for_run
from dvt.weights import load_weights


def param_groups(model: nn.Module, *, weight_decay: float, backbone_lr_scale: float) -> list[dict]:
    """Weight decay on matrices only; when fine-tuning, non-head parameters get lr * scale."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        is_head = ".head." in name or name.startswith("head.")
        groups.setdefault((no_decay, is_head), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr_scale": 1.0 if is_head else backbone_lr_scale}
            for (no_decay, is_head), ps in groups.items()]


def _outputs(out: Path) -> dict[str, Path]:
    return {"checkpoint": out / layout.CHECKPOINT, "log": out / layout.TRAIN_LOG, "live": out / live.FOLDER,
            "summary": out / layout.TRAIN_SUMMARY, "resume": out / layout.RESUME}


def _write_log(files: dict[str, Path], rows: list[dict], *, csv: bool = True, dvclive: bool = True) -> None:
    """train_log.csv (every column, wall-clock times included) and the same epochs for DVCLive."""
    if csv:
        with atomic_path(files["log"]) as tmp:
            keys = list(rows[0])
            lines = [",".join(keys)] + [",".join(_fmt(r[k]) for k in keys) for r in rows]
            tmp.write_text("\n".join(lines) + "\n")
    if dvclive:
        live.write(files["live"], rows)


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _summary(config: Config, run: str, rows: list[dict], extra: dict | None = None) -> dict:
    """train.json. Rows without timings (rebuilt from a checkpoint, which keeps none) give None for them."""
    k = config.run(run).num_exits
    last = rows[-1] if rows else {}
    timed = [r for r in rows if r.get("seconds") is not None]
    return {"run": run, "seed": config.seed, "grids": list(config.run(run).exit_grids), "epochs": last.get("epoch", 0),
            "top1": {f"exit{i + 1}": last.get(f"top1_exit{i + 1}") for i in range(k)},
            "seconds_per_epoch": statistics.median(r["seconds"] for r in timed) if timed else None,
            "images_per_second": statistics.median(r["images_per_s"] for r in timed) if timed else None,
            **(extra or {})}


def _timed(rows: list[dict], timings: list[dict]) -> list[dict]:
    """The log rows with each epoch's wall-clock seconds and images/s (None where not known)."""
    return [{**r, **(timings[i] if i < len(timings) else {"seconds": None, "images_per_s": None})}
            for i, r in enumerate(rows)]


def _import_checkpoint(config: Config, run: str, files: dict[str, Path]) -> None:
    """runs.R.checkpoint: take given weights as they are (e.g. official DVT) instead of training."""
    rc = config.run(run)
    model = model_for_run(config, run)
    source = load_weights(model, rc.checkpoint, strict=True)
    device = pick_device()
    model.to(device)
    cal = load_split(config, "calibration")
    top1 = top1_per_exit(model, cal, batch_size=config.eval.batch_size, device=device, amp=config.train.amp) \
        if len(cal) else [float("nan")] * rc.num_exits
    row = {"epoch": 0, **{f"top1_exit{i + 1}": t for i, t in enumerate(top1)}, "seconds": 0.0, "images_per_s": 0.0}
    _write_log(files, [row])
    checkpoint.save_recorded(files["checkpoint"], {"model": model.state_dict(), "epoch": config.train.epochs,
                                                   "config": checkpoint.run_fingerprint(config, run), "log": [row],
                                                   "imported_from": source},
                             _summary(config, run, [row], {"imported_from": source}))
    print(f"dvt train: {run}: imported {rc.checkpoint}; calibration top-1 per exit "
          + " / ".join(f"{t:.2f}" for t in top1))


def run(config: Config, *, run: str, restart: bool = False) -> dict:
    """Train (or resume, or import) one seed of `run`; a second trainer of it refuses while this one runs."""
    # Under torchrun every process runs this; the first holds the lock for all of them.
    lock = exclusive(config.run_dir(run), "train") if _rank() == 0 else contextlib.nullcontext()
    with lock:
        return _train(config, run=run, restart=restart)


def _rank() -> int:
    """This process's rank under torchrun (before the process group is joined), else 0."""
    return int(os.environ.get("RANK", "0"))


def _sync_batchnorm(model: nn.Module, dist: Distributed, *, device: torch.device, run: str) -> nn.Module:
    """A CNN baseline's BatchNorm normalises by its batch: over the global batch only when synced, which
    torch does on GPUs only."""
    if dist.world == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dist.main:
        print(f"dvt train: {run}: note: on the CPU each of the {dist.world} processes normalises BatchNorm "
              "by its own slice of the batch (torch syncs BatchNorm on GPUs only)")
    return model


def _train_loader(train_set, dist: Distributed, *, batch_size: int, num_workers: int,
                  generator: torch.Generator) -> torch.utils.data.DataLoader:
    """The shuffled training batches of this process: all of them for one process, else this rank's
    slice of each of the same global batches (dvt.data.shards)."""
    if dist.world == 1:
        return make_loader(train_set, batch_size=batch_size, shuffle=True, generator=generator,
                           num_workers=num_workers, drop_last=True)
    shards = ShardedBatches(train_set, batch_size=batch_size, generator=generator, rank=dist.rank,
                            world=dist.world)
    return make_loader(train_set, batch_sampler=shards, generator=generator, num_workers=num_workers,
                       worker_init_fn=functools.partial(seed_worker_of_rank, dist.rank))


# Steps between host synchronisations: the progress bar's loss and speed, and the check that every exit's
# loss is finite. Between them the losses are summed on the device, so a GPU is never stalled per step.
LOG_EVERY = 20


@dataclass
class Trainer:
    """What one seed of a run trains with, built once (and restored on resume)."""

    model: nn.Module
    train_model: nn.Module  # the model, wrapped in DDP under several processes
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's CosineLRScheduler, stepped per update
    ema: Any | None  # timm's ModelEmaV3
    scaler: torch.amp.GradScaler
    mixup: Any | None  # timm's Mixup (mixup / cutmix)
    criterion: nn.Module
    loader: torch.utils.data.DataLoader
    data_gen: torch.Generator  # draws the data order (and the loader workers' seeds)
    device: torch.device
    dist: Distributed


def _train(config: Config, *, run: str, restart: bool) -> dict:
    files = _outputs(config.run_dir(run))
    if config.run(run).checkpoint:
        if _rank() == 0:  # the others have nothing to do
            _import_checkpoint(config, run, files)
        return {}
    dist = Distributed.from_env()
    device = pick_device("auto")
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    torch.set_num_threads(config.train.threads)

    extra = {"ema": config.train.ema_decay is not None, "processes": dist.world}
    state, finished = _previous_state(config, run, files, dist=dist, restart=restart, extra=extra)
    if finished is not None:
        return finished
    train_set, cal_set = _datasets(config, dist)
    trainer = build_trainer(config, run, train_set, dist=dist, device=device)
    rows: list[dict] = []  # per epoch, deterministic: what the checkpoint keeps
    timings: list[dict] = []  # per epoch, wall-clock: only in resume.pt and the log
    start_epoch = 0
    if state is not None:
        rows, timings, start_epoch = resume(trainer, state, seed=config.seed)
        if dist.main:
            print(f"dvt train: {run}/seed{config.seed}: resuming after epoch {start_epoch} of {config.train.epochs}")

    grids = config.run(run).exit_grids
    for epoch in range(start_epoch, config.train.epochs):
        tic = time.perf_counter()
        try:
            loss_sums, seen = train_one_epoch(trainer, epoch=epoch, config=config, run=run)
        except NonFiniteLoss as bad:
            k = bad.exit
            raise DvtError(f"the loss of exit {k + 1} (grid {grids[k]}x{grids[k]}) became {bad.value} at epoch "
                           f"{epoch + 1}, step {bad.step}; the last good state (epoch {epoch}) is kept in "
                           f"{files['resume']}. Lower train.lr or set train.clip_grad") from None
        seconds = time.perf_counter() - tic
        top1 = evaluate(trainer, cal_set, config=config, num_exits=len(grids))
        steps = len(trainer.loader)
        row = {"epoch": epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"],
               **{f"loss_exit{k + 1}": float(loss_sums[k] / steps) for k in range(len(grids))},
               "loss": float(loss_sums.sum() / steps),
               **{f"top1_exit{k + 1}": t for k, t in enumerate(top1)}}
        rows.append(row)
        timings.append({"seconds": seconds, "images_per_s": seen / seconds})
        state = save_epoch(trainer, files, rows=rows, timings=timings,
                           fingerprint=checkpoint.run_fingerprint(config, run))
        if dist.main:
            print(f"dvt train: {run}/seed{config.seed} epoch {epoch + 1}/{config.train.epochs}: loss "
                  f"{row['loss']:.4f}, calibration top-1 " + " / ".join(f"{t:.2f}" for t in top1)
                  + f" ({seconds:.1f} s, {seen / seconds:.0f} img/s)")
        dist.barrier()  # the others wait while rank 0 evaluates and writes
    return _finish(config, run, files, state=state, log=_timed(rows, timings), extra=extra, dist=dist)


def _previous_state(config: Config, run: str, files: dict[str, Path], *, dist: Distributed, restart: bool,
                    extra: dict) -> tuple[dict | None, dict | None]:
    """(resume.pt's state to go on from, or None; train.json's summary if the run is already trained).

    Resume or refuse before anything is built, so a mismatch costs nothing. With --restart a file of
    other settings is ignored, not deleted: it is overwritten only when the new run writes its own, so a
    setting refused later (or a kill) loses nothing.
    """
    fingerprint = checkpoint.run_fingerprint(config, run)
    for kind in ("checkpoint", "resume"):
        if not files[kind].is_file():
            continue
        try:
            # a damaged finished file is not "already trained"
            sha = checkpoint.verified_sha256(files[kind]) if kind == "checkpoint" else None
            state = checkpoint.load(files[kind])
        except DvtError as err:
            if not restart:
                raise
            # --restart starts over whatever the old file holds; it is replaced when this run writes its own.
            if dist.main:
                print(f"dvt train: {run}/seed{config.seed}: starting over ({err})")
            continue
        diff = checkpoint.describe_difference(state["config"], fingerprint)
        if diff and not restart:
            raise DvtError(f"{files[kind]} was trained with other settings ({diff}); delete it, "
                           "rename the run, or pass --restart")
        if diff:
            continue
        if kind == "resume":
            return state, None
        return None, _already_trained(config, run, files, state=state, sha=sha, dist=dist, extra=extra)
    return None, None


def _already_trained(config: Config, run: str, files: dict[str, Path], *, state: dict, sha: str | None,
                     dist: Distributed, extra: dict) -> dict:
    """A finished run is left as it is; only a deleted log or summary is written again (without timings,
    which the checkpoint does not keep). Nothing is written when nothing is missing (a read-only folder)."""
    summary = {**_summary(config, run, state["log"], extra), "checkpoint_sha256": sha}
    if dist.main:
        csv_missing, live_missing = not files["log"].is_file(), not (files["live"] / "metrics.json").is_file()
        if csv_missing or live_missing:
            _write_log(files, _timed(state["log"], []), csv=csv_missing, dvclive=live_missing)
        if not files["summary"].is_file():  # (recording the file as it is now)
            write_json(files["summary"], summary)
        files["resume"].unlink(missing_ok=True)  # left by a kill between writing checkpoint.pt and deleting it
        for path in files.values():  # and what killed writers of this run left
            sweep(path)
        epochs = f"{state['epoch']} epoch{'s' if state['epoch'] != 1 else ''}"
        print(f"dvt train: {run}/seed{config.seed} is already trained ({epochs}); nothing to do")
    return summary


def _datasets(config: Config, dist: Distributed) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """(train split, or its train.subset; calibration split)."""
    tc = config.train
    train_set = load_split(config, "train")
    cal_set = load_split(config, "calibration")
    if tc.subset is not None and tc.subset >= len(train_set) and dist.main:
        print(f"dvt train: note: train.subset = {tc.subset} is not below the train split's {len(train_set)} images: "
              "every image is used")
    if tc.subset is not None and tc.subset < len(train_set):
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed))[: tc.subset]
        train_set = torch.utils.data.Subset(train_set, keep.sort().values.tolist())
    if tc.batch_size > len(train_set):
        raise DvtError(f"train.batch_size = {tc.batch_size} is larger than the train split ({len(train_set)} "
                       "images); lower it")
    check_split(tc.batch_size, dist.world)
    return train_set, cal_set


def build_trainer(config: Config, run: str, train_set: torch.utils.data.Dataset, *, dist: Distributed,
                  device: torch.device) -> Trainer:
    """The model, optimiser, scheduler, EMA, mixup, loss and loader of one seed of `run`, in a fixed order of
    random draws: the same seed builds the same trainer, bit for bit."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    rc, tc = config.run(run), config.train
    # Every generator the run draws from (numpy: timm's mixup/cutmix; python: RandAugment), and so also
    # their states in checkpoint.pt: retraining gives the same bytes, and later stages stay up to date.
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = model_for_run(config, run)
    if rc.init:
        load_weights(model, rc.init, strict=False)
    model.to(device)
    if dist.rank > 0:  # after the model: every rank builds the same one (DDP would broadcast rank 0's anyway)
        seed_rank(config.seed, dist.rank)
    model = _sync_batchnorm(model, dist, device=device, run=run)
    # The order of the data (and the loader workers' seeds) is drawn from this generator alone, the same
    # on every rank: one process's global batches whatever the process count.
    data_gen = torch.Generator().manual_seed(config.seed)
    loader = _train_loader(train_set, dist, batch_size=tc.batch_size, num_workers=config.data.num_workers,
                           generator=data_gen)
    steps = len(loader)
    optimizer = create_optimizer_v2(
        param_groups(model, weight_decay=tc.weight_decay, backbone_lr_scale=tc.backbone_lr_scale if rc.init else 1.0),
        opt=tc.optimizer, lr=tc.lr, momentum=tc.momentum,
        # One kernel over all parameters instead of ~10 small ops per tensor: on the CPU 1 ms instead of
        # 8 ms per step for the default cascade's 200 tensors (about 3 % of a step).
        fused=True)
    scheduler = CosineLRScheduler(optimizer, t_initial=(tc.epochs - tc.cooldown_epochs) * steps, lr_min=tc.min_lr,
                                  warmup_t=round(tc.warmup_epochs * steps), warmup_lr_init=tc.warmup_lr,
                                  t_in_epochs=False)
    ema = ModelEmaV3(model, decay=tc.ema_decay) if tc.ema_decay else None
    mixup = None
    if tc.mixup > 0 or tc.cutmix > 0:
        mixup = Mixup(mixup_alpha=tc.mixup, cutmix_alpha=tc.cutmix, label_smoothing=tc.label_smoothing,
                      num_classes=model.num_classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    scaler = torch.amp.GradScaler("cuda", enabled=tc.amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    train_model: nn.Module = model
    if dist.world > 1:
        # A one-channel patch embedding's weight gradient (D, 1, p, p) has the strides of another layout
        # in the size-1 dimension, the same memory: DDP's copy into its bucket is right but warns.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(model=model, train_model=train_model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                   scaler=scaler, mixup=mixup, criterion=criterion, loader=loader, data_gen=data_gen, device=device,
                   dist=dist)


def resume(trainer: Trainer, state: dict, *, seed: int) -> tuple[list[dict], list[dict], int]:
    """Restore resume.pt's state into `trainer`; returns (log rows, timings, epochs done)."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.ema is not None:
        trainer.ema.module.load_state_dict(state["ema"])
    if trainer.scaler.is_enabled() and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    _restore_rng(state, trainer.data_gen, trainer.dist, seed=seed, epoch=state["epoch"])
    return list(state["log"]), list(state.get("timings", [])), state["epoch"]


class NonFiniteLoss(Exception):
    """An exit's loss became NaN or infinite (exit index from 0, its summed value, the step that saw it)."""

    def __init__(self, exit: int, value: float, step: int) -> None:
        super().__init__(exit, value, step)
        self.exit, self.value, self.step = exit, value, step


def train_one_epoch(trainer: Trainer, *, epoch: int, config: Config, run: str) -> tuple[torch.Tensor, int]:
    """One pass over the loader; returns ((K,) float64 sums over the steps of each exit's global-batch mean
    loss, on the CPU; images seen over all processes). NonFiniteLoss stops it at the next check."""
    from dvt.progress import progress

    t, tc, dist = trainer, config.train, trainer.dist
    steps = len(t.loader)
    t.train_model.train()
    loss_sums: torch.Tensor | None = None  # (K,) float64 on the device
    first_bad = torch.zeros(config.run(run).num_exits, dtype=torch.long, device=t.device)
    bad_value = torch.zeros_like(first_bad, dtype=torch.float64)
    seen, tic = 0, time.perf_counter()
    bar = progress(t.loader, desc=f"{run} epoch {epoch + 1}/{tc.epochs}", unit="batch", leave=False, disable=not dist.main,
                   mininterval=1.0)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
        target = y
        if t.mixup is not None:
            x, target = t.mixup(x, y)
        with autocast(t.device, tc.amp):
            outputs = t.train_model(x)
        losses = torch.stack([t.criterion(o.float(), target) for o in outputs])  # (K,) means over this slice
        # (K,) means over the global batch: what is logged, and checked on every rank alike, so that all
        # stop together (one stopping alone would break the others' gradient sum).
        global_losses = dist.mean(losses).detach().double()
        loss_sums = global_losses if loss_sums is None else loss_sums + global_losses
        # The step at which each exit's loss first went NaN or infinite (0: not yet), kept on the device.
        went_bad = ~torch.isfinite(global_losses) & (first_bad == 0)
        first_bad = torch.where(went_bad, step + 1, first_bad)
        bad_value = torch.where(went_bad, global_losses, bad_value)
        if step % LOG_EVERY == 0 or step == steps - 1:  # the host syncs: once per interval
            _check_finite(first_bad, bad_value)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(losses.sum()).backward()
        if tc.clip_grad is not None:
            t.scaler.unscale_(t.optimizer)
            nn.utils.clip_grad_norm_(t.model.parameters(), tc.clip_grad)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        if t.ema is not None:
            t.ema.update(t.model)
        t.scheduler.step_update(epoch * steps + step + 1)
        seen += len(x) * dist.world
        if dist.main and step % LOG_EVERY == 0:
            # refresh=False: shown at the bar's next own refresh, so a log file still gets one line per interval
            bar.set_postfix(loss=f"{global_losses.sum().item():.3f}",
                            img_s=f"{seen / (time.perf_counter() - tic):.0f}", refresh=False)
    assert loss_sums is not None  # (a loader has at least one batch: batch_size <= the split)
    return loss_sums.cpu(), seen


def _check_finite(first_bad: torch.Tensor, bad_value: torch.Tensor) -> None:
    """NonFiniteLoss for the exit whose loss went bad first (the lowest exit at the same step)."""
    steps = first_bad.tolist()
    bad = [(s, k) for k, s in enumerate(steps) if s > 0]
    if bad:
        step, k = min(bad)
        raise NonFiniteLoss(k, bad_value[k].item(), step)


def evaluate(trainer: Trainer, cal_set: torch.utils.data.Dataset, *, config: Config, num_exits: int) -> list[float]:
    """Calibration top-1 per exit (of the EMA weights where there are), on rank 0; NaN elsewhere or when the
    calibration split is empty."""
    if not len(cal_set) or not trainer.dist.main:
        return [float("nan")] * num_exits
    model = trainer.ema.module if trainer.ema is not None else trainer.model
    return top1_per_exit(model, cal_set, batch_size=config.eval.batch_size, device=trainer.device,
                         amp=config.train.amp)


def save_epoch(trainer: Trainer, files: dict[str, Path], *, rows: list[dict], timings: list[dict],
               fingerprint: dict) -> dict:
    """resume.pt and the log after an epoch (rank 0 writes; every rank gives its random state); returns the
    training state, which the last epoch's checkpoint.pt keeps."""
    t = trainer
    # Taken after rank 0's evaluation, which draws its loader's seed from torch's generator.
    rng = t.dist.gather(checkpoint.rng_state(t.data_gen))
    state = {"model": t.model.state_dict(), "ema": t.ema.module.state_dict() if t.ema is not None else None,
             "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
             "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else None,
             "rng": rng[0] if rng else None, "config": fingerprint, "epoch": rows[-1]["epoch"], "log": rows}
    if t.dist.world > 1:
        state["rng_per_rank"] = rng
    if t.dist.main:
        checkpoint.save(files["resume"], {**state, "timings": timings})
        _write_log(files, _timed(rows, timings))
    return state


def _finish(config: Config, run: str, files: dict[str, Path], *, state: dict, log: list[dict], extra: dict,
            dist: Distributed) -> dict:
    """checkpoint.pt and train.json from the last epoch's state; resume.pt goes."""
    summary = _summary(config, run, log, extra)
    if dist.main:
        _write_log(files, log)
        # Last, so that checkpoint.pt appears only when all is written, with train.json recording its
        # sha256. It keeps no wall-clock times: later stages depend on its hash, and retraining bit for
        # bit must leave that hash alone.
        # (a run killed after its last resume.pt comes here with that file's state, timings and all)
        kept = {k: v for k, v in state.items() if k not in ("timings", "format", "git_commit")}
        summary = checkpoint.save_recorded(files["checkpoint"], kept, summary)
        files["resume"].unlink()
    return summary


def _restore_rng(state: dict, data_gen: torch.Generator, dist: Distributed, *, seed: int, epoch: int) -> None:
    """Each rank's random states from resume.pt; rank 0's for all if it was written by another count.

    The data order then goes on as before (every rank's data generator is in rank 0's state anyway), so
    the run resumes on the same global batches; ranks > 0 get fresh augmentation streams for the epochs
    left, since rank 0's would repeat on every slice.
    """
    saved = state.get("rng_per_rank") or [state["rng"]]
    if len(saved) == dist.world:
        checkpoint.set_rng_state(saved[dist.rank], data_gen)
        return
    if dist.main:
        print(f"dvt train: note: resume.pt was written by {len(saved)} process{'es' if len(saved) > 1 else ''}, "
              f"this run has {dist.world}: resuming on the same global batches with process 0's random state")
    checkpoint.set_rng_state(saved[0], data_gen)
    if dist.rank > 0:
        seed_rank(seed, dist.rank, epoch)

