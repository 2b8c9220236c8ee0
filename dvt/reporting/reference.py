"""The paper's reference values (dvt/reference/paper.yaml) and when they apply to our configuration.

A block of the paper applies when dataset, backbone, image size and token grids all match ours: only
then do the reports put its numbers beside ours (an ImageNet accuracy next to a CIFAR one would
compare nothing); otherwise they show it apart, as a reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from dvt.errors import DvtError

RESOURCE = ("dvt.reference", "paper.yaml")


@dataclass(frozen=True)
class Setting:
    """What a number was measured on: dataset, backbone registry name, input side."""

    dataset: str
    backbone: str
    image_size: int


@dataclass(frozen=True)
class Table1Row:
    grid: int
    top1: float
    gmacs: float


@dataclass(frozen=True)
class Table1:
    source: str
    model: str
    setting: Setting
    rows: tuple[Table1Row, ...]

    def row(self, grid: int) -> Table1Row | None:
        return next((r for r in self.rows if r.grid == grid), None)


@dataclass(frozen=True)
class Curve:
    """A released checkpoint's budgeted curve: one point per listed budget p."""

    name: str
    source: str
    setting: Setting
    grids: tuple[int, ...]
    budgets: tuple[int, ...]
    gmacs: tuple[float, ...]
    top1: tuple[float, ...]


@dataclass(frozen=True)
class PerExit:
    name: str
    backbone: str
    top1: tuple[float, ...]


@dataclass(frozen=True)
class Reference:
    paper: str
    table1: Table1
    per_exit_source: str
    per_exit_setting: tuple[str, int, tuple[int, ...]]  # dataset, image size, grids
    per_exit: tuple[PerExit, ...]
    curves: tuple[Curve, ...]
    # Shown as they are (with gains and ratios added), never computed on: plain mappings.
    table2: dict[str, Any]
    table3: dict[str, Any]
    fig6_speedups: dict[str, Any]

    def curves_for(self, setting: Setting, grids: tuple[int, ...]) -> list[Curve]:
        return [c for c in self.curves if c.setting == setting and c.grids == tuple(grids)]

    def per_exit_for(self, setting: Setting, grids: tuple[int, ...]) -> PerExit | None:
        dataset, image_size, ref_grids = self.per_exit_setting
        if (setting.dataset, setting.image_size, tuple(grids)) != (dataset, image_size, ref_grids):
            return None
        return next((m for m in self.per_exit if m.backbone == setting.backbone), None)


def _setting(block: dict[str, Any]) -> Setting:
    return Setting(dataset=block["dataset"], backbone=block["backbone"], image_size=int(block["image_size"]))


def _table2(block: dict[str, Any]) -> dict[str, Any]:
    # As in the paper: a gain where the throughputs are matched, a speed-up where the accuracies are.
    rows = [{**r, "gain": r["dvt_top1"] - r["top1"] if r["matched"] == "throughput" else None,
             "speedup": r["dvt_img_per_s"] / r["img_per_s"] if r["matched"] == "accuracy" else None}
            for r in block["rows"]]
    return {**block, "rows": rows}


def _table3(block: dict[str, Any]) -> dict[str, Any]:
    rows = [{"model": r["model"], **{d: {**r[d], "speedup": r[d]["gmacs"] / r[d]["dvt_gmacs"]}
                                     for d in block["datasets"]}} for r in block["rows"]]
    return {**block, "rows": rows}


def parse(data: dict[str, Any]) -> Reference:
    t1 = data["table1"]
    pe = data["per_exit_top1"]
    return Reference(
        paper=data["paper"],
        table1=Table1(source=t1["source"], model=t1["model"], setting=_setting(t1),
                      rows=tuple(Table1Row(grid=int(r["grid"]), top1=float(r["top1"]), gmacs=float(r["gmacs"]))
                                 for r in t1["rows"])),
        per_exit_source=pe["source"],
        per_exit_setting=(pe["dataset"], int(pe["image_size"]), tuple(pe["grids"])),
        per_exit=tuple(PerExit(name=m["name"], backbone=m["backbone"], top1=tuple(map(float, m["top1"])))
                       for m in pe["models"]),
        curves=tuple(Curve(name=c["name"], source=c["source"], setting=_setting(c), grids=tuple(c["grids"]),
                           budgets=tuple(int(p[0]) for p in c["points"]),
                           gmacs=tuple(float(p[1]) for p in c["points"]),
                           top1=tuple(float(p[2]) for p in c["points"])) for c in data["curves"]),
        table2=_table2(data["table2"]),
        table3=_table3(data["table3"]),
        fig6_speedups=data["fig6_speedups"],
    )


def load() -> Reference:
    """The reference file shipped in the package."""
    text = resources.files(RESOURCE[0]).joinpath(RESOURCE[1]).read_text()
    try:
        return parse(yaml.safe_load(text))
    except (KeyError, TypeError, ValueError) as err:
        raise DvtError(f"the packaged reference file {'/'.join(RESOURCE)} is malformed ({err!r}); reinstall dvt")\
            from None
