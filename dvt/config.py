"""The whole configuration as frozen dataclasses, loaded strictly from `params.yaml`.

Strict means: an unknown key, a value of the wrong type or a value out of range is a `ConfigError`
naming the key, the value and what is allowed. Each section's `__post_init__` checks ranges; the
loader checks names and types from the annotations, so adding a field is one line.

The dataclass defaults are the shipped params.yaml's values (a test keeps them equal), so a key left
out of a params file means what it means in params.yaml, not some other default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dvt import layout
from dvt.backbones import CNN_GRID
from dvt.errors import ConfigError
from dvt.grids import grows

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
Dataset = Literal["cluttered-fashion-mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet", "folder", "synthetic"]


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Deterministic generated images (tests and smoke runs); used when data.dataset is synthetic."""

    train_size: int = 600
    test_size: int = 200
    image_size: int = 28
    channels: int = 1
    classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_size", "test_size", "image_size", "channels", "classes"):
            _require(getattr(self, name) >= 1, f"data.synthetic.{name}", getattr(self, name), "must be >= 1")
        _require(self.classes <= 1000, "data.synthetic.classes", self.classes, "must be <= 1000")
        _require(self.channels in (1, 3), "data.synthetic.channels", self.channels, "1 or 3")


@dataclass(frozen=True)
class ClutteredConfig:
    """How cluttered-fashion-mnist is derived from Fashion-MNIST (dvt/data/cluttered.py)."""

    canvas: int = 56
    # Each item is small with probability small_share, else large; its side is then drawn uniformly
    # from small_scale or large_scale ([lowest, highest] px).
    small_share: float = 0.25
    small_scale: tuple[int, ...] = (10, 18)
    large_scale: tuple[int, ...] = (44, 56)
    # Fragments of other items pasted per image, and their side in px.
    clutter: int = 2
    fragment: int = 9
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.canvas >= 1, "data.cluttered.canvas", self.canvas, "must be >= 1")
        _require(0.0 <= self.small_share <= 1.0, "data.cluttered.small_share", self.small_share, "must be in [0, 1]")
        for name in ("small_scale", "large_scale"):
            lo_hi = getattr(self, name)
            _require(len(lo_hi) == 2 and 1 <= lo_hi[0] <= lo_hi[1] <= self.canvas, f"data.cluttered.{name}",
                     list(lo_hi), f"[lowest, highest] side in px, 1 <= lowest <= highest <= canvas={self.canvas}")
        _require(self.clutter >= 0, "data.cluttered.clutter", self.clutter, "must be >= 0")
        _require(1 <= self.fragment <= min(28, self.canvas), "data.cluttered.fragment", self.fragment,
                 f"must be in [1, {min(28, self.canvas)}] (cut from a 28 px item, pasted on the canvas)")


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset = "cluttered-fashion-mnist"
    root: str = "data"
    # Where the raw files already are: required for imagenet (a folder with train/ and val/) and folder
    # (any tree with train/ and val/ or test/, one sub-folder per class), optional for fashion-mnist
    # (IDX files) and cifar (the python tar.gz); null = known places / download.
    source: str | None = None
    download: bool = True
    calibration_size: int = 3000
    # Side of the square images fed to the model; null: the dataset's own size
    # (28 or 32; image folders and ImageNet are resized to 224).
    image_size: int | None = None
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    cluttered: ClutteredConfig = field(default_factory=ClutteredConfig)

    def __post_init__(self) -> None:
        _require(self.calibration_size >= 0, "data.calibration_size", self.calibration_size, "must be >= 0")
        if self.image_size is not None:
            _require(self.image_size >= 1, "data.image_size", self.image_size, "must be >= 1 or null")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "vit_micro_ss"
    drop_path: float = 0.0
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.drop_path < 1.0, "model.drop_path", self.drop_path, "must be in [0, 1)")
        _require(0.0 <= self.drop_rate < 1.0, "model.drop_rate", self.drop_rate, "must be in [0, 1)")


# The reference CNNs a run may name as `baseline` (dvt/backbones.py lists them, dvt/models/convnet.py
# builds them; a test keeps the two lists equal).
Baseline = Literal["resnet18_w16", "resnet18"]


@dataclass(frozen=True)
class RunConfig:
    """One trained model: a single token grid (one exit), a DVT cascade (several exits), or a
    reference CNN (`baseline`, no grids)."""

    grids: tuple[int, ...] = ()
    feature_reuse: bool = True
    relation_reuse: bool = True
    # This run's own backbone instead of model.backbone: one-exit models of other depths and widths, the
    # family DVT is compared with in the paper's Fig. 6 (configs/fig6.yaml).
    backbone: str | None = None
    # Start from this checkpoint (ours or an official *.pth.tar) and fine-tune it.
    init: str | None = None
    # Use this checkpoint as it is and skip training (e.g. the released official DVT weights).
    checkpoint: str | None = None
    # A CNN from timm trained by the same loop on the same data, shown beside the ViTs in Table 1.
    baseline: Baseline | None = None
    # Exits built from timm ViTs instead of model.backbone (dvt.models.cascade_from_timm): one timm
    # model name per grid, each cut into that grid's patches; `pretrained`: one local weights file (or
    # null) per exit, the exits' initialisation (timm resamples patch and position embeddings).
    timm: tuple[str, ...] = ()
    pretrained: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if self.baseline is not None:
            _require(not self.grids, "runs.*.grids", list(self.grids),
                     f"a baseline CNN ({self.baseline}) has no token grids; leave grids out")
        else:
            _require(len(self.grids) >= 1, "runs.*.grids", list(self.grids), "at least one grid")
        _require(all(g >= 1 for g in self.grids), "runs.*.grids", list(self.grids), "grids must be >= 1")
        _require(not self.grids or grows(self.grids), "runs.*.grids", list(self.grids),
                 "grids must grow strictly from exit to exit")
        _require(self.init is None or self.checkpoint is None, "runs.*.init", self.init,
                 "set init (fine-tune) or checkpoint (use as is), not both")
        _require(not self.timm or len(self.timm) == len(self.grids), "runs.*.timm", list(self.timm),
                 f"one timm model per grid ({len(self.grids)})")
        _require(not self.timm or self.baseline is None, "runs.*.timm", list(self.timm),
                 "a baseline CNN has no ViT exits; leave timm out")
        _require(self.backbone is None or not (self.baseline or self.timm), "runs.*.backbone", self.backbone,
                 "a run's model is its backbone, its baseline CNN or its timm exits: name one")
        _require(not self.pretrained or len(self.pretrained) == len(self.timm), "runs.*.pretrained",
                 list(self.pretrained), "one file (or null) per timm model of runs.*.timm")

    @property
    def exit_grids(self) -> tuple[int, ...]:
        """The grid of every exit as the stage files record it (a CNN's one exit: CNN_GRID)."""
        return self.grids or (CNN_GRID,)

    @property
    def num_exits(self) -> int:
        return len(self.exit_grids)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    # Global batch size (split evenly over the processes of `dvt train --processes N`).
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9  # sgd only
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    # May be a fraction: a short run warms up over part of its first epoch (0.1 = a tenth of one).
    warmup_epochs: float = 0.1
    # Final epochs held at min_lr after the cosine (the paper: 300 cosine + 10 cooldown).
    cooldown_epochs: int = 0
    weight_decay: float = 0.05
    # When fine-tuning (runs.*.init), everything but the classifier heads trains at lr * this.
    backbone_lr_scale: float = 1.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment: str | None = None
    random_erasing: float = 0.0
    ema_decay: float | None = None
    clip_grad: float | None = None
    # Use at most this many training images per epoch (null = all); for quick runs.
    subset: int | None = None
    amp: bool = True
    # CPU threads of torch while training. A result setting, not only a speed one: the CPU backward
    # sums in an order that depends on the thread count (one cascade step at 1 and at 2 threads: 213
    # of 230 gradient tensors differ in the last bits), so the weights follow it. Fixed here, never
    # taken from the engine, so `dvc repro` and `snakemake --cores N` train the same weights.
    threads: int = 2

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _require(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _require(self.min_lr >= 0, "train.min_lr", self.min_lr, "must be >= 0")
        _require(self.warmup_lr >= 0, "train.warmup_lr", self.warmup_lr, "must be >= 0")
        _require(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs", self.warmup_epochs,
                 f"must be in [0, train.epochs={self.epochs})")
        _require(0 <= self.cooldown_epochs < self.epochs - self.warmup_epochs, "train.cooldown_epochs",
                 self.cooldown_epochs, "must be >= 0 and leave at least one cosine epoch after warmup")
        _require(self.momentum >= 0, "train.momentum", self.momentum, "must be >= 0")
        _require(self.backbone_lr_scale > 0, "train.backbone_lr_scale", self.backbone_lr_scale, "must be > 0")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", self.label_smoothing, "must be in [0, 1)")
        _require(self.mixup >= 0, "train.mixup", self.mixup, "must be >= 0 (0 = off)")
        _require(self.cutmix >= 0, "train.cutmix", self.cutmix, "must be >= 0 (0 = off)")
        _require(0 <= self.random_erasing <= 1, "train.random_erasing", self.random_erasing, "must be in [0, 1]")
        if self.ema_decay is not None:
            _require(0 < self.ema_decay < 1, "train.ema_decay", self.ema_decay, "must be in (0, 1) or null")
        if self.clip_grad is not None:
            _require(self.clip_grad > 0, "train.clip_grad", self.clip_grad, "must be > 0 or null")
        if self.subset is not None:
            _require(self.subset >= 1, "train.subset", self.subset, "must be >= 1 or null")
        _require(self.threads >= 1, "train.threads", self.threads, "must be >= 1")


MAX_Q = 10.0


@dataclass(frozen=True)
class EvalConfig:
    # The paper's protocol: budgets p = 1..num_budgets, q = p * q_step, exit k gets a q^k share.
    num_budgets: int = 59
    q_step: float = 0.05
    # Which images fit the thresholds: the held-out calibration split, or (as the authors did)
    # augmented training images.
    threshold_split: Literal["calibration", "train-augmented"] = "calibration"
    # exact: floor(n x share) in exact arithmetic, confidence = our float32 max softmax. official: the
    # authors' float32 torch rounding of the shares and torch's softmax, bit for bit (their curves).
    rounding: Literal["exact", "official"] = "exact"
    # Speed only: an image's logits do not depend on the size of its batch (tests/test_collect.py).
    batch_size: int = 256
    # CPU threads of `dvt collect`. Logits are the same at 1 and 2 threads, but some GEMMs of larger
    # thread counts sum in another order, so the count is fixed here rather than left to the engine.
    threads: int = 2

    def __post_init__(self) -> None:
        _require(self.num_budgets >= 1, "eval.num_budgets", self.num_budgets, "must be >= 1")
        _require(self.q_step > 0, "eval.q_step", self.q_step, "must be > 0")
        # Past q = 10 the first exit's q^0 share is under 1 % of a 3-exit cascade's and shrinks fast: the
        # budgets collapse onto the later exits and repeat each other.
        _require(self.num_budgets * self.q_step <= MAX_Q, "eval.q_step", self.q_step,
                 f"num_budgets x q_step (the largest q) must be <= {MAX_Q:g}; the paper's 59 x 0.05 = 2.95")
        _require(self.batch_size >= 1, "eval.batch_size", self.batch_size, "must be >= 1")
        _require(self.threads >= 1, "eval.threads", self.threads, "must be >= 1")


@dataclass(frozen=True)
class SpeedConfig:
    batch_size: int = 128
    device: str = "auto"
    warmup: int = 2
    repeats: int = 15
    # Budget indices p (1-based, as in budget.csv) at which real early exit is timed.
    budgets: tuple[int, ...] = (10, 20, 30)
    threads: int = 1

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "speed.batch_size", self.batch_size, "must be >= 1")
        _require(self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None,
                 "speed.device", self.device, "auto, cpu, cuda or cuda:N")
        _require(self.warmup >= 0, "speed.warmup", self.warmup, "must be >= 0")
        _require(self.repeats >= 1, "speed.repeats", self.repeats, "must be >= 1")
        _require(all(p >= 1 for p in self.budgets), "speed.budgets", list(self.budgets), "budget indices are >= 1")
        _require(self.threads >= 1, "speed.threads", self.threads, "must be >= 1")


@dataclass(frozen=True)
class PoliciesConfig:
    # Risk-controlled thresholds (Learn then Test): with probability at least 1 - delta over the draw
    # of the calibration split, at most an epsilon share of test images is right at the last exit and
    # wrong where they leave (an upper bound of the accuracy drop against running every exit).
    epsilon: float = 0.02
    delta: float = 0.1
    # Random calibration/test re-splits of the run's pooled logits on which that guarantee is checked.
    resplits: int = 100

    def __post_init__(self) -> None:
        _require(0 < self.epsilon < 1, "policies.epsilon", self.epsilon, "must lie in (0, 1)")
        _require(0 < self.delta < 1, "policies.delta", self.delta, "must lie in (0, 1)")
        _require(self.resplits >= 0, "policies.resplits", self.resplits, "must be >= 0")


@dataclass(frozen=True)
class ReportConfig:
    dir: str = "reports"
    gallery_size: int = 8

    def __post_init__(self) -> None:
        _require(self.gallery_size >= 0, "report.gallery_size", self.gallery_size, "must be >= 0")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    runs: dict[str, RunConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Every run is trained once per seed (weights, data order, augmentation); the report shows the
    # mean and the standard deviation over them.
    seeds: tuple[int, ...] = (42,)
    # Where the runs' files go, for dvt used as a library or with --set (the tests put them in a temporary
    # folder). params.yaml leaves it out: dvc.yaml and workflow/ declare their outputs under runs/.
    runs_dir: str = "runs"

    def __post_init__(self) -> None:
        _require(len(self.seeds) >= 1, "seeds", list(self.seeds), "name at least one seed")
        # numpy's global seed (timm's mixup draws from it) takes 32 bits; torch and Python take more
        _require(all(0 <= s < 2**32 for s in self.seeds), "seeds", list(self.seeds),
                 "seeds are from 0 to 4294967295 (2**32 - 1, what numpy's generator takes)")
        _require(len(set(self.seeds)) == len(self.seeds), "seeds", list(self.seeds), "each seed once")
        for name in self.runs:
            # A run's name becomes a folder (runs/<run>/), a DVC stage (train@<run>-<seed>) and a word of
            # a shell command line: a space or a slash would break one of them.
            _require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None, "runs", name,
                     "a run's name is letters, digits, '_', '.' and '-' (no spaces or slashes), e.g. dvt_no_reuse")
        _require(max(self.speed.budgets, default=0) <= self.eval.num_budgets, "speed.budgets", list(self.speed.budgets),
                 f"budget indices run 1..eval.num_budgets = {self.eval.num_budgets}")
        _require(self.data.calibration_size > 0 or self.eval.threshold_split != "calibration",
                 "data.calibration_size", 0, "must be > 0 while eval.threshold_split is calibration (the "
                 "thresholds are fitted on it); to hold nothing out set eval.threshold_split: train-augmented")

    @property
    def seed(self) -> int:
        """The seed of a one-seed config: train, collect, budget and speed work on one seed at a time."""
        if len(self.seeds) != 1:
            raise ConfigError(f"seeds = {list(self.seeds)}: pick one (`--seed S`, or Config.with_seed)")
        return self.seeds[0]

    def with_seed(self, seed: int) -> Config:
        """This config narrowed to one of its seeds."""
        if seed not in self.seeds:
            raise ConfigError(f"seed {seed} is not in seeds {list(self.seeds)}")
        return dataclasses.replace(self, seeds=(seed,))

    def run_dir(self, run: str) -> Path:
        """runs/<run>/seed<seed>/: what training one seed of a run writes, and what is computed from it."""
        return Path(self.runs_dir) / run / f"seed{self.seed}"

    def command(self, stage: str, run: str) -> str:
        """The `dvt` command line that makes `stage`'s file of `run` (one seed's; flops: the run's), for
        error messages."""
        return f"dvt {stage} --run {run}" + ("" if stage == "flops" else f" --seed {self.seed}")

    def flops_path(self, run: str) -> Path:
        """runs/<run>/flops.json: a model's cost, the same for every seed."""
        return Path(self.runs_dir) / run / layout.FLOPS

    def backbone_of(self, run: str) -> str:
        """The model a run trains: its baseline CNN, its exits' timm ViT ("timm:<name>"), its own backbone,
        else model.backbone."""
        rc = self.run(run)
        if rc.timm:
            return f"timm:{rc.timm[-1]}"
        return rc.baseline or rc.backbone or self.model.backbone

    def run(self, name: str) -> RunConfig:
        if name not in self.runs:
            raise ConfigError(f"unknown run {name!r}; runs in params.yaml: {', '.join(self.runs) or '(none)'}")
        return self.runs[name]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---------------------------------------------------------------------------------------------
# Strict conversion between plain YAML data and the dataclasses above.

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and build dataclasses; raise ConfigError if off."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key} = {value!r} has the wrong type: expected {_type_name(tp)}")
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                # A value of the right type that fails a range check should say so, not "wrong type".
                if "wrong type" not in str(err):
                    raise
        raise bad
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key} = {value!r} is not one of {_type_name(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp)
        for k in value:
            if not isinstance(k, str):  # YAML reads a bare off/no/yes/on or 42 as a bool or a number
                raise ConfigError(f"{key}: the name {k!r} is not text (YAML reads off, on, yes, no, true and false "
                                  "as booleans and bare digits as numbers); quote it, e.g. 'off'")
        return {k: _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if value is None:
            # `policies:` left empty would otherwise silently mean every default
            raise ConfigError(f"{key} is empty (null): give its keys, or leave the section out for its defaults")
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # PyYAML (YAML 1.1) reads `1e-3` as a string; accept what is plainly a number.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"config annotation not handled: {tp!r}")


# Keys that moved: a params file written for an older dvt gets told where they went.
MOVED = {"train.seed": "seeds (a top-level list: every run is trained once per seed)"}


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            if where in MOVED:
                raise ConfigError(f"{where} is now {MOVED[where]}")
            raise ConfigError(f"unknown key {where}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError as err:
        # Range checks inside a run know only "runs.*": put the run's name in.
        raise ConfigError(str(err).replace("runs.*", prefix)) from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for YAML/JSON, the inverse of `from_dict`."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) wherever two JSON-like trees differ, keys in sorted order."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip(".") or "(whole config)", old, new)]


def from_dict(data: dict[str, Any]) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"params must be a mapping of sections, got {type(data).__name__}")
    return _build(Config, data, "")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings (value parsed as YAML) to nested plain data, in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.001")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {k} is not a section")
            node = child
        node[keys[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last value silently: `lr:` written twice would train with whichever came second)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice in one section (lines {seen[key]} and {line}); "
                                  "keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {str(path)!r} not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        # An empty file would run every default and replace the outputs of the settings it lost.
        raise ConfigError(f"{path} is empty; start from the shipped params.yaml or a file of configs/")
    return data


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read `path`, apply `--set` overrides, and validate everything."""
    return from_dict(apply_overrides(read_params(path), list(overrides or [])))
