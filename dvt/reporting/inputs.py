"""What `dvt report` reads: the stage outputs of the runs in params.yaml, each read and checked on first use.

A part of the report reads only the files it shows (Snakemake builds Table 1 without any cascade), so
files are read lazily; the whole report still reads everything before it writes anything. A missing
file is one DvtError line naming the first stage of that run still to run (train, collect, flops,
budget, speed). A file that contradicts params.yaml (other grids, backbone or number of budgets) is
stale and is refused, naming the stage that rewrites it. speed.json is optional where asked so.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dvt.config import Config, RunConfig
from dvt.errors import DvtError

# Stages of one run in pipeline order: (stage, the file that shows it ran, the stages it needs first).
STAGES = {
    "train": ("checkpoint.pt", ()),
    "collect": ("logits.parquet", ("train",)),
    "flops": ("flops.json", ()),
    "budget": ("eval.json", ("train", "collect")),
    "speed": ("speed.json", ("train", "collect", "budget")),
}
# Which stage writes each file `dvt report` reads.
WRITER = {"train_log.csv": "train", "train.json": "train", "logits.parquet": "collect", "flops.json": "flops",
          "budget.csv": "budget", "eval.json": "budget", "speed.json": "speed"}


class RunFiles:
    """One run's stage outputs; each property reads its file the first time it is used."""

    def __init__(self, config: Config, name: str) -> None:
        self.config, self.name = config, name
        self.spec: RunConfig = config.run(name)
        self.folder = Path(config.runs_dir) / name

    def __repr__(self) -> str:
        return f"RunFiles({self.name!r})"

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

    # -- files --------------------------------------------------------------------------------

    def path(self, file: str) -> Path:
        """The path of a file this run must have; a DvtError naming the stage to run if it is missing."""
        path = self.folder / file
        if path.is_file():
            return path
        stage = WRITER[file]
        todo = [s for s in (*STAGES[stage][1], stage) if not (self.folder / STAGES[s][0]).is_file()] or [stage]
        then = f" (then {', '.join(todo[1:])})" if len(todo) > 1 else ""
        raise DvtError(f"{path} not found: run `dvt {todo[0]} --run {self.name}` first{then}")

    def _json(self, file: str) -> dict[str, Any]:
        path = self.path(file)
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise DvtError(f"{path} is not a JSON object: rerun `dvt {WRITER[file]} --run {self.name}`")
        return data

    def _csv(self, file: str) -> pd.DataFrame:
        path = self.path(file)
        try:
            return pd.read_csv(path)
        except (ValueError, pd.errors.ParserError):
            raise DvtError(f"{path} is not a readable CSV: rerun `dvt {WRITER[file]} --run {self.name}`") from None

    def _stale(self, file: str, why: str) -> DvtError:
        return DvtError(f"{self.folder / file} {why}: rerun `dvt {WRITER[file]} --run {self.name}`")

    @cached_property
    def eval(self) -> dict[str, Any]:
        data = self._json("eval.json")
        if data.get("grids") != list(self.grids):
            raise self._stale("eval.json", f"is for grids {data.get('grids')}, params.yaml has {list(self.grids)}")
        if not all(f"exit{k + 1}" in data.get(key, {}) for key in ("gmacs", "top1") for k in range(self.num_exits)):
            raise self._stale("eval.json", "lacks per-exit gmacs/top1")
        return data

    @cached_property
    def budget(self) -> pd.DataFrame:
        """One row per budget p (one row for a one-exit run)."""
        frame = self._csv("budget.csv")
        rows = self.config.eval.num_budgets if self.is_cascade else 1
        columns = ["budget", "gmacs", "accuracy", *(f"exit_fraction_{k}" for k in range(self.num_exits))]
        if len(frame) != rows or any(c not in frame.columns for c in columns):
            raise self._stale("budget.csv", f"has {len(frame)} rows of another layout, params.yaml wants {rows} "
                              "(eval.num_budgets)")
        return frame

    @cached_property
    def flops(self) -> dict[str, Any]:
        data = self._json("flops.json")
        grids = [e.get("grid") for e in data.get("exits", [])]
        backbone = self.backbone
        if data.get("backbone") != backbone or grids != list(self.grids) or "total" not in data:
            raise self._stale("flops.json", f"is for {data.get('backbone')} on grids {grids}, params.yaml has "
                              f"{backbone} on {list(self.grids)}")
        return data

    @cached_property
    def train_log(self) -> pd.DataFrame:
        """One row per epoch (a single epoch-0 row for imported weights)."""
        frame = self._csv("train_log.csv")
        if "epoch" not in frame.columns:
            raise self._stale("train_log.csv", "has no epoch column")
        return frame

    @cached_property
    def speed(self) -> dict[str, Any] | None:
        """speed.json, or None when `dvt speed` has not run for this run."""
        if not (self.folder / "speed.json").is_file():
            return None
        data = self._json("speed.json")
        if data.get("grids") != list(self.grids):
            raise self._stale("speed.json", f"is for grids {data.get('grids')}, params.yaml has {list(self.grids)}")
        return data

    @property
    def logits_path(self) -> Path:
        return self.path("logits.parquet")

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

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The budgeted curve (GMACs, top-1) of budget.csv plus its two limits, everyone at exit 1 and
        everyone at the last exit, which are real operating points (thresholds +-inf)."""
        g, a = self.gmacs, self.top1
        return (np.concatenate([self.budget["gmacs"].to_numpy(float), [g[0], g[-1]]]),
                np.concatenate([self.budget["accuracy"].to_numpy(float), [a[0], a[-1]]]))


def run_files(config: Config) -> dict[str, RunFiles]:
    """Every run of params.yaml, in params order (nothing is read yet)."""
    if not config.runs:
        raise DvtError("params.yaml names no runs: add some under runs: (one grid = a ViT, several = DVT)")
    return {name: RunFiles(config, name) for name in config.runs}
