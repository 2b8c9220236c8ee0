"""What `dvt report` reads: the stage outputs of the runs in params.yaml, each read and checked on first use.

A part of the report reads only the files it shows (Snakemake builds Table 1 without any cascade), so
files are read lazily; the whole report still reads everything before it writes anything. A missing
file is one DvtError line naming the first stage of that run still to run (train, collect, flops,
budget, speed). A file that contradicts params.yaml (other grids, backbone or number of budgets) is
stale and is refused, naming the stage that rewrites it. speed.json is optional where asked so.
With several seeds (params.yaml `seeds`) a run's numbers are means over them, read from
runs/<run>/seed<S>/ (flops.json, the same for every seed, is runs/<run>/flops.json).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dvt import layout
from dvt.config import Config, RunConfig
from dvt.errors import DvtError

# Stages of one run in pipeline order: (stage, the file that shows it ran, the stages it needs first).
STAGES = {
    "train": (layout.CHECKPOINT, ()),
    "collect": (layout.LOGITS, ("train",)),
    "flops": (layout.FLOPS, ()),
    "budget": (layout.EVAL, ("train", "collect")),
    "speed": (layout.SPEED, ("train", "collect", "budget")),
    "policies": (layout.POLICIES, ("train", "collect")),
}
# Which stage writes each file `dvt report` reads.
WRITER = {layout.TRAIN_LOG: "train", layout.TRAIN_SUMMARY: "train", layout.LOGITS: "collect", layout.FLOPS: "flops",
          layout.BUDGET: "budget", layout.EVAL: "budget", layout.SPEED: "speed", layout.POLICIES_CSV: "policies",
          layout.POLICIES: "policies"}


class _Run:
    """What a run is, from params.yaml alone (nothing read), and its budgeted curve: shared by one
    seed's files (SeedFiles) and the run over all its seeds (RunFiles)."""

    config: Config
    name: str
    spec: RunConfig

    @property
    def grids(self) -> tuple[int, ...]:
        return self.spec.exit_grids

    @property
    def is_baseline(self) -> bool:
        """A reference CNN (runs.<run>.baseline), not a ViT."""
        return self.spec.baseline is not None

    @property
    def backbone(self) -> str:
        return self.config.backbone_of(self.name)

    @property
    def num_exits(self) -> int:
        return self.spec.num_exits

    @property
    def is_cascade(self) -> bool:
        return self.num_exits > 1

    # Given by each kind of run: cumulative GMACs and test top-1 per exit, one row per budget.
    gmacs: tuple[float, ...]
    top1: tuple[float, ...]
    budget: pd.DataFrame

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The budgeted curve (GMACs, top-1) of budget.csv plus its two limits, everyone at exit 1 and
        everyone at the last exit, which are real operating points (thresholds +-inf)."""
        g, a = self.gmacs, self.top1
        return (np.concatenate([self.budget["gmacs"].to_numpy(float), [g[0], g[-1]]]),
                np.concatenate([self.budget["accuracy"].to_numpy(float), [a[0], a[-1]]]))


class SeedFiles(_Run):
    """One seed of one run: its stage outputs, each read the first time it is used.

    `config` is narrowed to that seed (Config.with_seed); flops.json is the run's, shared by its seeds.
    """

    def __init__(self, config: Config, name: str) -> None:
        self.config, self.name = config, name
        self.seed = config.seed
        self.spec: RunConfig = config.run(name)
        self.folder = config.run_dir(name)

    def __repr__(self) -> str:
        return f"SeedFiles({self.name!r}, seed={self.seed})"

    # -- files --------------------------------------------------------------------------------

    def _where(self, file: str) -> Path:
        return self.config.flops_path(self.name) if file == layout.FLOPS else self.folder / file

    def path(self, file: str) -> Path:
        """The path of a file this run must have; a DvtError naming the stage to run if it is missing."""
        path = self._where(file)
        if path.is_file():
            return path
        stage = WRITER[file]
        todo = [s for s in (*STAGES[stage][1], stage) if not self._where(STAGES[s][0]).is_file()] or [stage]
        then = f" (then {', '.join(todo[1:])})" if len(todo) > 1 else ""
        raise DvtError(f"{path} not found: run `{self.config.command(todo[0], self.name)}` first{then}")

    def _json(self, file: str) -> dict[str, Any]:
        path = self.path(file)
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise DvtError(f"{path} is not a JSON object: rerun `{self._rerun(file)}`")
        return data

    def _csv(self, file: str) -> pd.DataFrame:
        path = self.path(file)
        try:
            return pd.read_csv(path)
        except (ValueError, pd.errors.ParserError):
            raise DvtError(f"{path} is not a readable CSV: rerun `{self._rerun(file)}`") from None

    def _rerun(self, file: str) -> str:
        return self.config.command(WRITER[file], self.name)

    def _stale(self, file: str, why: str) -> DvtError:
        return DvtError(f"{self._where(file)} {why}: rerun `{self._rerun(file)}`")

    @cached_property
    def eval(self) -> dict[str, Any]:
        data = self._json(layout.EVAL)
        if data.get("grids") != list(self.grids):
            raise self._stale(layout.EVAL, f"is for grids {data.get('grids')}, params.yaml has {list(self.grids)}")
        if not all(f"exit{k + 1}" in data.get(key, {}) for key in ("gmacs", "top1") for k in range(self.num_exits)):
            raise self._stale(layout.EVAL, "lacks per-exit gmacs/top1")
        return data

    @cached_property
    def budget(self) -> pd.DataFrame:
        """One row per budget p (one row for a one-exit run)."""
        frame = self._csv(layout.BUDGET)
        rows = self.config.eval.num_budgets if self.is_cascade else 1
        columns = ["budget", "gmacs", "accuracy", *(f"exit_fraction_{k}" for k in range(self.num_exits))]
        if len(frame) != rows or any(c not in frame.columns for c in columns):
            raise self._stale(layout.BUDGET, f"has {len(frame)} rows of another layout, params.yaml wants {rows} "
                              "(eval.num_budgets)")
        return frame

    @cached_property
    def flops(self) -> dict[str, Any]:
        data = self._json(layout.FLOPS)
        grids = [e.get("grid") for e in data.get("exits", [])]
        backbone = self.backbone
        if data.get("backbone") != backbone or grids != list(self.grids) or "total" not in data:
            raise self._stale(layout.FLOPS, f"is for {data.get('backbone')} on grids {grids}, params.yaml has "
                              f"{backbone} on {list(self.grids)}")
        return data

    @cached_property
    def train_log(self) -> pd.DataFrame:
        """One row per epoch (a single epoch-0 row for imported weights)."""
        frame = self._csv(layout.TRAIN_LOG)
        if "epoch" not in frame.columns:
            raise self._stale(layout.TRAIN_LOG, "has no epoch column")
        return frame

    @cached_property
    def speed(self) -> dict[str, Any] | None:
        """speed.json, or None when `dvt speed` has not run for this run."""
        if not self._where(layout.SPEED).is_file():
            return None
        data = self._json(layout.SPEED)
        if data.get("grids") != list(self.grids):
            raise self._stale(layout.SPEED, f"is for grids {data.get('grids')}, params.yaml has {list(self.grids)}")
        return data

    @cached_property
    def policies(self) -> dict[str, Any]:
        """policies.json: each exit policy's headline numbers and the risk-controlled thresholds."""
        data = self._json(layout.POLICIES)
        if data.get("grids") != list(self.grids) or "max_softmax" not in data.get("policies", {}):
            raise self._stale(layout.POLICIES, f"is for grids {data.get('grids')}, params.yaml has {list(self.grids)}")
        return data

    @cached_property
    def policy_curves(self) -> pd.DataFrame:
        """policies.csv: budget.csv's rows for every policy, with a first column `policy`."""
        frame = self._csv(layout.POLICIES_CSV)
        if "policy" not in frame.columns or "max_softmax" not in set(frame["policy"]):
            raise self._stale(layout.POLICIES_CSV, "has no max_softmax rows")
        return frame

    @property
    def logits_path(self) -> Path:
        return self.path(layout.LOGITS)

    # -- numbers ------------------------------------------------------------------------------

    @property
    def gmacs(self) -> tuple[float, ...]:
        """Cumulative GMACs per exit (eval.json): the cost of leaving at exit k."""
        return tuple(float(self.eval["gmacs"][f"exit{k + 1}"]) for k in range(self.num_exits))

    @property
    def top1(self) -> tuple[float, ...]:
        """Test top-1 of each exit alone, percent (eval.json)."""
        return tuple(float(self.eval["top1"][f"exit{k + 1}"]) for k in range(self.num_exits))

    @property
    def params(self) -> int:
        return int(self.flops["total"]["params"])


def _seed_mean(frames: list[pd.DataFrame], by: list[str] | None = None) -> pd.DataFrame:
    """The seeds' frames averaged row by row, rows matched by the columns `by` (kept first, in their
    first seed's order) or else by index; one seed's frame as it is."""
    if len(frames) == 1:
        return frames[0]
    stacked = pd.concat(frames)
    if by is None:
        return stacked.groupby(level=0).mean(numeric_only=True)
    return stacked.groupby(by, sort=False, as_index=False).mean(numeric_only=True)


def _mean_tree(items: list[Any]) -> Any:
    """The mean of same-shaped JSON values: numbers averaged leaf by leaf, anything else (and numbers
    equal in all of them) taken from the first."""
    first = items[0]
    if isinstance(first, dict):
        return {k: _mean_tree([i[k] for i in items]) for k in first if all(k in i for i in items)}
    if all(i == first for i in items) or isinstance(first, bool) or not isinstance(first, (int, float)):
        return first
    return float(np.mean(items))


class RunFiles(_Run):
    """One run over the seeds of params.yaml, as the report shows it: every number is the mean over the
    seeds (a budget row: the mean of that budget's operating points), `top1_std` the sample standard
    deviation of each exit's top-1 (None with one seed). `seeds` keeps each seed's own files, for what
    cannot be averaged (which image leaves where)."""

    def __init__(self, config: Config, name: str) -> None:
        self.config, self.name = config, name
        self.spec = config.run(name)
        self.seeds = tuple(SeedFiles(config.with_seed(s), name) for s in config.seeds)

    def __repr__(self) -> str:
        return f"RunFiles({self.name!r}, seeds={list(self.config.seeds)})"

    @property
    def flops(self) -> dict[str, Any]:
        return self.seeds[0].flops  # one file for all seeds (shapes only)

    @property
    def params(self) -> int:
        return self.seeds[0].params

    @property
    def gmacs(self) -> tuple[float, ...]:
        return tuple(float(np.mean(g)) for g in zip(*(s.gmacs for s in self.seeds)))

    @property
    def top1(self) -> tuple[float, ...]:
        return tuple(float(np.mean(t)) for t in zip(*(s.top1 for s in self.seeds)))

    @property
    def top1_std(self) -> tuple[float, ...] | None:
        if len(self.seeds) < 2:
            return None
        return tuple(float(np.std(t, ddof=1)) for t in zip(*(s.top1 for s in self.seeds)))

    @cached_property
    def budget(self) -> pd.DataFrame:
        return _seed_mean([s.budget for s in self.seeds])

    @cached_property
    def policy_curves(self) -> pd.DataFrame:
        """policies.csv, each policy's budget rows averaged over the seeds."""
        return _seed_mean([s.policy_curves for s in self.seeds], by=["policy", "budget"])

    @cached_property
    def train_log(self) -> pd.DataFrame:
        return _seed_mean([s.train_log for s in self.seeds], by=["epoch"])

    @cached_property
    def speed(self) -> dict[str, Any] | None:
        """speed.json averaged over the seeds; None unless every seed has one."""
        found = [s.speed for s in self.seeds]
        return None if any(f is None for f in found) else _mean_tree(found)

    @property
    def logits_path(self) -> Path:
        """The first seed's logits (the gallery shows one trained model)."""
        return self.seeds[0].logits_path


def run_files(config: Config) -> dict[str, RunFiles]:
    """Every run of params.yaml over its seeds, in params order (nothing is read yet)."""
    if not config.runs:
        raise DvtError("params.yaml names no runs: add some under runs: (one grid = a ViT, several = DVT)")
    return {name: RunFiles(config, name) for name in config.runs}
