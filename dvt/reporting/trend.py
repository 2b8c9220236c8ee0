"""Reading finished pipelines that differ in training budget, and how their findings move: the
library of `dvt trend` (dvt/stages/trend.py). Per folder: the report's seed means (findings.json,
metrics.json), each run's per-seed top-1 (runs/<run>/seed<S>/metrics.json) and its epoch times
(train_log.csv); across folders, the least-squares slope of each quantity per doubling of the images
seen, the table the page renders and the figure."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dvt.config import Config, load_config
from dvt.errors import DvtError
from dvt.reporting.findings import CascadeShape
from dvt.reporting.reference import load as load_reference

# The quantities the table and figure follow (key in trend.json -> what it is), each from the report's
# seed means.
QUANTITIES = {
    "margin": "DVT's last exit minus the finest one-exit model (points)",
    "margin_share": "that margin as a share of DVT's climb from its first exit to its last",
    "cost_share": "GFLOPs share at which DVT reaches the finest one-exit model (Table 3)",
    "family_cost_share": "GFLOPs share at which DVT reaches the depth family's best model it can (Fig. 6)",
    "equal_cost_gap": "DVT minus the coarsest one-exit model at its cost (points)",
    "share_above_front": "share of the shared cost range where DVT is above the family's front",
    "family_mean_gap": "DVT minus the family's front, mean over that range (points)",
    "reuse_gain_last_exit": "reuse: last exit with minus without (points)",
    "reuse_gain_at_equal_gmacs": "reuse: mean gain at equal GFLOPs over the budgets (points)",
    "measured_speedup": "measured speed-up at the finest model's top-1 (CPU, batch 128)",
}

# The quantities that are None when DVT's budgeted curve never reaches the model's top-1, and the finding
# that then fails.
NEVER_REACHED = {"cost_share": "dvt_is_cheaper_at_equal_accuracy",
                 "family_cost_share": "dvt_is_cheaper_than_the_family",
                 "measured_speedup": "dvt_is_faster_at_equal_accuracy"}


@dataclass(frozen=True)
class Point:
    """One finished pipeline: its budget, cost and the quantities of QUANTITIES (None: cannot tell)."""

    folder: str
    epochs: float
    images_per_model: int
    seeds: tuple[int, ...]
    train_seconds: float  # all runs and seeds, the sum of their epoch times
    findings: dict[str, bool | None]  # finding name -> holds
    quantities: dict[str, float | None]
    margin_per_seed: dict[int, float]
    top1_per_seed: dict[str, dict[int, float]]  # run -> seed -> last exit's test top-1

    @property
    def margin_std(self) -> float | None:
        values = list(self.margin_per_seed.values())
        return statistics.stdev(values) if len(values) > 1 else None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DvtError(f"{path}: not found: finish that pipeline first (snakemake or dvc repro there)") from None
    except (UnicodeDecodeError, ValueError):
        raise DvtError(f"{path}: not valid JSON: rerun the stage that writes it") from None


def last_top1(path: Path, run: str) -> float:
    data = _json(path)
    # The budget stage files the numbers under the run's name; a pipeline it ran before that (an older
    # study) has them at the top.
    own = data.get(run) if isinstance(data.get(run), dict) else data
    top1 = own.get("top1")
    if not isinstance(top1, dict) or not top1:
        raise DvtError(f"{path}: holds no top1 per exit: rerun that run's budget stage")
    return float(top1[f"exit{len(top1)}"])


def _epoch_log(path: Path) -> pd.DataFrame:
    try:
        log = pd.read_csv(path)
    except FileNotFoundError:
        raise DvtError(f"{path}: not found: train that run first") from None
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError):
        raise DvtError(f"{path}: not a training log: rerun that run's train stage") from None
    if not {"epoch", "seconds", "images_per_s"} <= set(log.columns):
        raise DvtError(f"{path}: lacks the epoch, seconds and images_per_s columns: rerun that run's train stage")
    return log[log["epoch"] > 0]  # (epoch 0: the evaluation before training, when the log has one)


def _numbers(findings: dict[str, Any], name: str) -> dict[str, Any]:
    return findings[name]["numbers"] if name in findings else {}


def _gap(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else round(float(a) - float(b), 2)


def read_point(folder: Path) -> Point:
    """The quantities of one finished pipeline in `folder` (its params.yaml, runs/, report)."""
    if not folder.is_dir():
        raise DvtError(f"{folder}: no such folder")
    try:
        config: Config = load_config(folder / "params.yaml")
    except DvtError as err:
        raise DvtError(f"{folder}: {err}") from None
    report, runs = folder / config.report.dir, folder / config.runs_dir  # (relative to the folder)
    page = _json(report / "findings.json")
    metrics = _json(report / "metrics.json")
    findings = {f["name"]: f for f in page.get("findings", [])}
    dvt_run = page.get("dvt_run")
    finest = _numbers(findings, "dvt_is_cheaper_at_equal_accuracy").get("finest")
    if dvt_run is None or finest is None:
        raise DvtError(f"{report / 'findings.json'}: names no DVT cascade and no finest one-exit model: "
                       "a budget study needs both (runs with one grid and a cascade)")
    seeds = tuple(config.seeds)
    top1 = {run: {s: last_top1(runs / run / f"seed{s}" / "metrics.json", run) for s in seeds}
            for run in config.runs}
    margin = {s: round(top1[dvt_run][s] - top1[finest][s], 2) for s in seeds}

    logs = {(run, s): _epoch_log(runs / run / f"seed{s}" / "train_log.csv")
            for run in config.runs if not config.runs[run].checkpoint for s in seeds}
    dvt_log = logs[(dvt_run, seeds[0])]
    images = int(round(float((dvt_log["seconds"] * dvt_log["images_per_s"]).sum())))

    rise = _numbers(findings, "dvt_exits_rise")
    cost = _numbers(findings, "dvt_is_cheaper_at_equal_accuracy")
    at_cost = _numbers(findings, "dvt_is_better_at_equal_cost")
    front = _numbers(findings, "dvt_is_above_the_family_front")
    family = _numbers(findings, "dvt_is_cheaper_than_the_family")
    reuse = _numbers(findings, "reuse_makes_later_exits_better")
    last_exit = max((k for k in rise if k.startswith("dvt_top1_exit")), default=None)
    quantities = {
        "margin": _gap(rise.get(last_exit), rise.get("finest_one_exit_top1")) if last_exit else None,
        "margin_share": cost.get("margin_share"),
        "cost_share": cost.get("cost_share"),
        "family_cost_share": family.get("cost_share"),
        "equal_cost_gap": _gap(at_cost.get("dvt_top1_at_that_cost"), at_cost.get("coarsest_top1")),
        "share_above_front": front.get("share_above_front"),
        "family_mean_gap": front.get("mean_gap"),
        "reuse_gain_last_exit": reuse.get("gain"),
        "reuse_gain_at_equal_gmacs": reuse.get("mean_gain_at_equal_gmacs"),
        "measured_speedup": metrics.get("dvt", {}).get("measured_speedup"),
    }
    return Point(folder=str(folder), epochs=config.train.epochs, images_per_model=images, seeds=seeds,
                 train_seconds=round(float(sum(log["seconds"].sum() for log in logs.values())), 1),
                 findings={name: f.get("holds") for name, f in findings.items()}, quantities=quantities,
                 margin_per_seed=margin, top1_per_seed=top1)


def figure(out: Path, points: Sequence[Point], *, paper_cost_share: float | None) -> list[str]:
    from dvt.reporting.figures import new_figure, save

    x = [p.images_per_model for p in points]
    fig = new_figure(figsize=(10, 6.2))
    axes = fig.subplots(2, 3, sharex=True)
    panels = [
        ("points", "DVT's margin over the finest one-exit model", [("margin", "mean")], 0.0),
        ("share of GFLOPs", "cost to reach the finest / the family's best (bar: 0.6)",
         [("cost_share", "vs the finest grid"), ("family_cost_share", "vs the depth family")], 0.6),
        ("points", "at the coarsest model's cost: DVT minus it", [("equal_cost_gap", "gap")], 0.0),
        ("points / share", "against the family's front",
         [("family_mean_gap", "mean gap (points)"), ("share_above_front", "share of costs above")], 0.0),
        ("points", "reuse minus no reuse",
         [("reuse_gain_last_exit", "last exit"), ("reuse_gain_at_equal_gmacs", "at equal GFLOPs")], 0.0),
        ("x", "measured speed-up at the finest model's top-1", [("measured_speedup", "CPU, batch 128")], 1.0),
    ]
    for ax, (ylabel, title, series, line) in zip(axes.flat, panels):
        for key, label in series:
            ys = [p.quantities[key] for p in points]
            shown = any(y is not None for y in ys)
            if shown:  # a missing budget is NaN, which breaks the line there instead of bridging it
                color = ax.plot(x, [math.nan if y is None else y for y in ys], marker="o",
                                label=label)[0].get_color()
            # A share or speed-up that is missing because DVT's curve never reaches the model's top-1 is
            # a failure, not a gap: an x near the top of the panel says so (its colour names the series).
            never = never_reached(points, key)
            if never:
                ax.scatter(never, [0.92] * len(never), marker="x", s=40, color=color if shown else "black",
                           transform=ax.get_xaxis_transform(), label="never reached", zorder=4)
        if series[0][0] == "margin":  # each seed as a small dot under the mean
            for p in points:
                ax.scatter([p.images_per_model] * len(p.margin_per_seed), list(p.margin_per_seed.values()),
                           s=10, color="grey", zorder=3, label=None)
        ax.axhline(line, color="black", linewidth=0.7, linestyle=":")
        if series[0][0] == "cost_share" and paper_cost_share is not None:
            ax.axhline(paper_cost_share, color="tab:red", linewidth=0.8, linestyle="--",
                       label=f"paper (DVT-T2T-ViT-12): {paper_cost_share:.2f}")
        ax.set_title(title, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7, loc="best")
    for ax in axes[-1]:
        ax.set_xlabel("images seen per model")
    return save(fig, out, "trend")


def _never(p: Point, key: str) -> bool:
    """`key` is missing at this budget because DVT never reaches the model's top-1 (its finding fails),
    as opposed to a quantity the pipeline cannot tell (no such run)."""
    finding = NEVER_REACHED.get(key)
    return finding is not None and p.quantities[key] is None and p.findings.get(finding) is False


def never_reached(points: Sequence[Point], key: str) -> list[int]:
    """Images seen of the budgets where DVT never reaches what `key` measures against."""
    return [p.images_per_model for p in points if _never(p, key)]


def slopes(points: Sequence[Point]) -> dict[str, float | None]:
    """Per quantity, the least-squares slope against log2(images seen): its change per doubling of the
    training; None with fewer than three budgets that tell it."""
    out: dict[str, float | None] = {}
    for key in QUANTITIES:
        xs = [math.log2(p.images_per_model) for p in points if p.quantities[key] is not None]
        ys = [p.quantities[key] for p in points if p.quantities[key] is not None]
        out[key] = float(np.polyfit(xs, ys, 1)[0]) if len(set(xs)) >= 3 else None
    return out


def paper_cost_share() -> float | None:
    """The released DVT's share of T2T-ViT-12's GFLOPs at its top-1 (ImageNet; dvt/reference/paper.yaml),
    the line the figure draws beside ours."""
    paper = CascadeShape.of_paper(load_reference())
    if paper is None or paper.margin_share is None:
        return None
    return round(paper.cost_share_at(paper.margin_share), 3)


def table(points: Sequence[Point]) -> dict[str, Any]:
    names = list(dict.fromkeys(name for p in points for name in p.findings))
    return {
        "points": [{**asdict(p), "margin_std": p.margin_std, "folder": Path(p.folder).name,
                    "never_reached": [key for key in QUANTITIES if _never(p, key)]}
                   for p in points],
        "quantities": QUANTITIES,
        "slopes": slopes(points),
        "paper_cost_share": paper_cost_share(),
        "findings": [{"name": n, "holds": [p.findings.get(n) for p in points]} for n in names],
    }
