"""`dvt check`: every value of params.yaml that a later stage would refuse, refused at once.

The strict loader (dvt.config) checks names, types and ranges without importing torch. This adds what
needs the model registry, timm or the file system: each run's backbone and token grids at the
dataset's image size, the RandAugment string, the weights files runs name (readable, and fitting the
run's model: loaded on the meta device), data.root, and the data `dvt fetch` would read (data.source,
a folder tree's classes and images, a CIFAR archive's md5, the training images against
data.calibration_size and train.batch_size). It runs

* in `dvt` before every stage that builds a model or writes data (fetch, train, flops, collect, speed);
* in Snakemake when the workflow loads (rules/common.smk), before any job is scheduled;
* in DVC as the `check` stage, which every other stage follows: its output never changes, so it
  reruns (a second or two) only when params.yaml changes and never makes another stage rerun.

So a typo stops both engines before any job deletes or rewrites a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dvt.atomic import write_text
from dvt.config import Config
from dvt.errors import ConfigError, DvtError
from dvt.released import where_to_get

# What the DVC `check` stage writes: always these bytes, so stages depending on it never rerun for it.
CHECKED = "params.ok"


def check(config: Config, *, pipeline: bool = False) -> None:
    """ConfigError naming the key for the first value some stage would refuse. `pipeline`: for a whole
    pipeline (the `check` stage, Snakemake's load), which also needs runs to report on."""
    from dvt.backbones import get_spec
    from dvt.data.info import dataset_info
    from dvt.grids import check_grids

    if pipeline and not config.runs:
        raise ConfigError("runs: params.yaml names no runs; add at least one (e.g. `tokens_7x7: {grids: [7]}`)")
    info = dataset_info(config.data)
    size = info.image_size
    for name, rc in config.runs.items():
        if rc.timm:
            _check_timm(name, rc.timm, rc.grids, size, in_chans=info.channels, num_classes=info.num_classes)
        else:
            backbone = config.backbone_of(name)
            try:
                get_spec(backbone)
            except DvtError as err:
                key = f"runs.{name}.backbone" if rc.backbone else "model.backbone"
                raise ConfigError(f"{key}: {err}") from None
            try:
                check_grids(backbone, rc.exit_grids, size)
            except DvtError as err:
                raise ConfigError(f"runs.{name}.grids: {err}") from None
        _check_weights(config, name)
    if config.train.randaugment:
        _check_randaugment(config.train.randaugment, size)
    root = Path(config.data.root)
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"data.root = {config.data.root!r}: {existing} is a file, not a folder")
    _check_source(config)


def _check_weights(config: Config, run: str) -> None:
    """Each weights file a run names exists, is readable and fits the run's model the way train will
    load it: init loosely (fine-tuning keeps fresh heads), checkpoint exactly, timm's pretrained files
    through timm. The model is built on the meta device: shapes only, no memory, no copying."""
    rc = config.run(run)
    for key, paths in (("init", [rc.init]), ("checkpoint", [rc.checkpoint]), ("pretrained", rc.pretrained)):
        for path in paths:
            if path is not None and not Path(path).expanduser().is_file():
                source = where_to_get(path)
                raise ConfigError(f"runs.{run}.{key} = {path!r}: no such file"
                                  + (f"; {source}: download it to that path" if source else ""))
    own = Path(config.runs_dir, run).resolve()
    for key, path in (("init", rc.init), ("checkpoint", rc.checkpoint)):
        # The engines delete a run's outputs before training it again: its own checkpoint would be gone.
        if path is not None and Path(path).expanduser().resolve().is_relative_to(own):
            raise ConfigError(f"runs.{run}.{key} = {path!r} is this run's own output, which the pipeline deletes "
                              "before training the run again; copy it elsewhere first (e.g. checkpoints/)")
    if not (rc.init or rc.checkpoint or any(rc.pretrained)):
        return
    import warnings  # (torch only here: a params file without weights files is checked in 0.1 s)

    import torch

    from dvt.run_models import model_for_run
    from dvt.weights import fitting_state

    with warnings.catch_warnings(), torch.device("meta"):
        # Copying a real tensor into a meta one is a no-op that torch warns about: here it is the point.
        warnings.filterwarnings("ignore", message=".*meta parameter.*")
        try:
            model = model_for_run(config, run)  # loads (and so tests) timm's pretrained files
        except DvtError as err:
            raise ConfigError(f"runs.{run}.pretrained: {err}") from None
        for key, path, strict in (("init", rc.init, False), ("checkpoint", rc.checkpoint, True)):
            if path is not None:
                try:
                    fitting_state(model, path, strict=strict)
                except DvtError as err:
                    raise ConfigError(f"runs.{run}.{key}: {err}") from None


def _check_source(config: Config) -> None:
    """What `dvt fetch` and `dvt train` would refuse of the data. Unless the fetched folder was built from
    these very settings (then fetch does not run, the source may even be gone, and its manifest gives
    the counts): data.source exists, a folder tree has valid class folders and images in every train
    class, a CIFAR archive has the published md5, and data.calibration_size leaves training images.
    Always: a training batch fits in the training images."""
    from dvt.data.manifest import fetched_with, fingerprint
    from dvt.data.sources import check_calibration_size, train_count

    data = config.data
    folder = Path(data.root) / data.dataset
    current = fetched_with(folder, fingerprint(data)) if data.dataset != "synthetic" else None
    if current is not None:
        count = current["counts"]["train"] + current["counts"]["calibration"]
    else:
        if data.source is not None and data.dataset != "synthetic" and not Path(data.source).expanduser().exists():
            raise ConfigError(f"data.source = {data.source!r}: no such folder or file, and {folder} was not "
                              "fetched from it (dvt fetch would need it)")
        try:
            count = train_count(data)
        except DvtError as err:
            raise ConfigError(f"data.source: {err}") from None
    if count is None:  # still to be downloaded: fetch and train check the counts
        return
    try:
        check_calibration_size(data.calibration_size, count)
    except DvtError as err:
        raise ConfigError(str(err)) from None
    train = count - data.calibration_size
    if config.train.subset is not None:
        train = min(train, config.train.subset)
    if config.runs and config.train.batch_size > train:
        raise ConfigError(f"train.batch_size = {config.train.batch_size} is larger than the train split ({train} "
                          "images); lower it")


def _check_timm(run: str, names: tuple[str, ...], grids: tuple[int, ...], size: int, *, in_chans: int,
                num_classes: int) -> None:
    """Each timm name exists and makes a plain ViT on its grid with the dataset's channels and classes, as
    train builds it (on the meta device: no memory, no weights), and the exits agree in shape."""
    import torch

    from dvt.models.from_timm import cascade_from_timm

    try:
        with torch.device("meta"):
            cascade_from_timm(list(names), grids=grids, img_size=size, in_chans=in_chans, num_classes=num_classes,
                              feature_reuse=False, relation_reuse=False)
    except DvtError as err:
        raise ConfigError(f"runs.{run}.timm: {err}") from None


def _check_randaugment(spec: str, size: int) -> None:
    from timm.data import create_transform

    try:
        create_transform(size, is_training=True, auto_augment=spec)
    except (AssertionError, ValueError, KeyError, IndexError):
        raise ConfigError(f"train.randaugment = {spec!r} is not a timm augmentation string, e.g. "
                          "rand-m9-mstd0.5-inc1 (or null)") from None


def run(config: Config, *, verify: bool = False) -> None:
    check(config, pipeline=True)
    out = Path(config.runs_dir) / CHECKED
    if not out.is_file() or out.read_text() != "ok\n":
        write_text(out, "ok\n")
    print(f"dvt check: {len(config.runs)} runs x {len(config.seeds)} seeds: every setting is valid")
    if verify:
        _verify(config)


def _verify(config: Config) -> None:
    """Every trained checkpoint against train's record, every DVC output against dvc.lock (dvt.verify)."""
    from dvt import verify

    weights, bad_weights = verify.checkpoints(config)
    files, bad_files = verify.dvc_outputs(Path.cwd())
    damaged = bad_weights + bad_files
    for d in damaged:
        print(f"dvt check --verify: damaged: {d}", file=sys.stderr)
    if damaged:
        raise DvtError(f"--verify: {len(damaged)} damaged (above) of {weights} checkpoints and {files} DVC output files")
    print(f"dvt check --verify: {weights} checkpoints match train's records and {files} DVC output files "
          "match dvc.lock")
