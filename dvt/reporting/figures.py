"""The report's plots, each saved as PNG and SVG: accuracy vs GMACs (paper Fig. 6), training curves,
exit shares per budget.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state), and saved
without timestamps and with a fixed SVG id salt, so rerunning the report on the same inputs gives the
same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dvt.reporting.compare import VsFamily
from dvt.reporting.exit_policies import PolicyComparison
from dvt.reporting.inputs import RunFiles
from dvt.reporting.reference import Curve, Table1

UNIT = "GFLOPs (multiply-adds)"
FORMATS = ("png", "svg")
# Text stays text in the SVGs (searchable, smaller); a fixed salt keeps their element ids stable.
STYLE = {"svg.hashsalt": "dvt-report", "svg.fonttype": "none", "font.size": 9, "axes.grid": True,
         "grid.alpha": 0.3}


def save(fig: Figure, folder: Path, stem: str) -> list[str]:
    """Write folder/stem.png and folder/stem.svg; returns the file names."""
    names = []
    with matplotlib.rc_context(STYLE):
        for fmt in FORMATS:
            name = f"{stem}.{fmt}"
            # No creation date in the files: the same inputs give the same bytes.
            meta = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(folder / name, format=fmt, dpi=150, metadata=meta)
            names.append(name)
            # The first save placed everything; keep those positions instead of solving the layout again.
            fig.set_layout_engine("none")
    return names


def new_figure(**kwargs) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(layout="constrained", **kwargs)


def _colors() -> Iterator[str]:
    while True:
        yield from matplotlib.colormaps["tab10"].colors


def accuracy_vs_gmacs(folder: Path, *, cascades: Sequence[RunFiles], singles: Sequence[RunFiles],
                      paper_curves: Sequence[Curve], paper_table1: Table1 | None, title: str,
                      baselines: Sequence[RunFiles] = (), family: VsFamily | None = None) -> list[str]:
    """DVT budgeted curves (lines) against the one-exit runs (points), the reference CNNs (triangles) and
    a family of other depths with its front (Fig. 6: diamonds on a dotted line); the paper's when they
    apply."""
    fig = new_figure(figsize=(6.4, 4.4))
    with matplotlib.rc_context(STYLE):
        ax = fig.add_subplot()
        colors = _colors()
        for run in cascades:
            frame = run.budget.sort_values("gmacs")
            color = next(colors)
            ax.plot(frame["gmacs"], frame["accuracy"], "-", color=color, lw=1.6,
                    label=f"{run.name} (DVT, grids {'-'.join(map(str, run.grids))})")
            ax.plot(run.gmacs, run.top1, "o", color=color, ms=4, mfc="white")
        for run in singles:
            ax.plot(run.gmacs[0], run.top1[0], "s", color="black", ms=6)
            ax.annotate(f"{run.grids[0]}x{run.grids[0]}", (run.gmacs[0], run.top1[0]), textcoords="offset points",
                        xytext=(6, -3), fontsize=8)
        if singles:
            ax.plot([], [], "s", color="black", label="one-exit runs (token grid)")
        for run in baselines:
            ax.plot(run.gmacs[0], run.top1[0], "^", color="dimgray", ms=7, label=f"{run.name} (reference CNN)")
        if family is not None:
            ax.plot([m.gmacs for m in family.front], [m.top1 for m in family.front], ":", color="black", lw=1.2)
            ax.plot([m.gmacs for m in family.members], [m.top1 for m in family.members], "D", color="black",
                    mfc="white", ms=5, label="one-exit family (Fig. 6) and its front")
            for m in family.members:
                ax.annotate(m.run, (m.gmacs, m.top1), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if cascades:
            ax.plot([], [], "o", color="gray", mfc="white", ms=4, label="each exit alone")
        for curve in paper_curves:
            ax.plot(curve.gmacs, curve.top1, "--", color="gray", lw=1.2, label=f"paper: {curve.name}")
        if paper_table1 is not None:
            ax.plot([r.gmacs for r in paper_table1.rows], [r.top1 for r in paper_table1.rows], "D", color="gray",
                    mfc="none", ms=6, label=f"paper Table 1: {paper_table1.model}")
        ax.set_xlabel(f"average {UNIT} per image")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="best")
    return save(fig, folder, "accuracy_vs_gmacs")


def training_curves(folder: Path, runs: Sequence[RunFiles]) -> list[str]:
    """Calibration top-1 and training loss per epoch (train_log.csv), one row of panels per token grid.

    Each panel holds every run's exit on that grid, so a one-exit model sits beside the cascade exit
    of the same grid, and the reuse settings' exits side by side; a run keeps its colour throughout.
    """
    grids = sorted({g for run in runs for g in run.grids})
    fig = new_figure(figsize=(7.5, 2.1 * len(grids) + 0.5))
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(len(grids), 2, squeeze=False, sharex=True)
        for run, color in zip(runs, _colors()):
            log = run.train_log
            for k, grid in enumerate(run.grids):
                top1_ax, loss_ax = axes[grids.index(grid)]
                label = run.name if run.num_exits == 1 else f"{run.name}, exit {k + 1}"
                if f"top1_exit{k + 1}" in log:
                    top1_ax.plot(log["epoch"], log[f"top1_exit{k + 1}"], "o-", ms=3, color=color, label=label)
                if f"loss_exit{k + 1}" in log:
                    loss_ax.plot(log["epoch"], log[f"loss_exit{k + 1}"], "o-", ms=3, color=color, label=label)
        for (top1_ax, loss_ax), grid in zip(axes, grids):
            top1_ax.set_ylabel(f"{grid}x{grid} tokens\ncalibration top-1 (%)")
            loss_ax.set_ylabel("training loss")
            if not loss_ax.lines:
                _empty(loss_ax, "no training: the weights were imported")
            top1_ax.legend(fontsize=6, loc="lower right")
        for ax in axes[-1]:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(fig, folder, "training_curves")


def exit_fractions(folder: Path, cascades: Sequence[RunFiles], *, q_step: float) -> list[str]:
    """Per cascade: the share of test images leaving at each exit, for every budget p (stacked)."""
    fig = new_figure(figsize=(3.2 * max(1, len(cascades)), 3.0))
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(1, max(1, len(cascades)), squeeze=False, sharey=True)[0]
        if not cascades:
            _empty(axes[0], "no DVT cascade in params.yaml")
        for ax, run in zip(axes, cascades):
            frame = run.budget
            shares = [100 * frame[f"exit_fraction_{k}"] for k in range(run.num_exits)]
            ax.stackplot(frame["budget"], *shares, alpha=0.85,
                         labels=[f"exit {k + 1} ({g}x{g})" for k, g in enumerate(run.grids)])
            ax.set_title(run.name)
            ax.set_xlabel(f"budget p (q = p x {q_step:g})")
            ax.set_xlim(frame["budget"].min(), frame["budget"].max())
            ax.set_ylim(0, 100)
        axes[0].set_ylabel("test images leaving here (%)")
        if cascades:
            axes[0].legend(fontsize=7, loc="upper right")
    return save(fig, folder, "exit_fractions")


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def policies(folder: Path, run: RunFiles, comparison: PolicyComparison) -> list[str]:
    """Left: test top-1 against GMACs, one curve per exit policy (mean over seeds, budget by budget) and
    the risk-controlled thresholds' point per seed. Right: the test risk of the risk-controlled
    thresholds over random calibration/test re-splits, against epsilon."""
    curves = run.policy_curves
    fig = new_figure(figsize=(9.0, 3.8))
    with matplotlib.rc_context(STYLE):
        left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
        for (name, frame), color in zip(curves.groupby("policy", sort=False), _colors()):
            frame = frame.sort_values("gmacs")
            left.plot(frame["gmacs"], frame["accuracy"], "-", color=color, lw=2.2 if name == "max_softmax" else 1.2,
                      label=name)
        for check in comparison.risk:
            left.plot(check.gmacs, check.accuracy, "*", color="black", ms=9,
                      label=f"risk-controlled (epsilon {check.epsilon:g}, delta {check.delta:g})"
                      if check is comparison.risk[0] else None)
        left.set_xlabel(f"average {UNIT} per image")
        left.set_ylabel("test top-1 (%)")
        left.set_title(f"{run.name}: exit policies at the same budgets")
        left.legend(fontsize=7, loc="best")
        pool = [100 * r for check in comparison.risk for r in check.risks]
        if pool:
            check = comparison.risk[0]
            part = [100 * r for c in comparison.risk for r in c.test_part_risks]
            bins = np.linspace(min(pool + part), max(pool + part), 25)
            right.hist(part, bins=bins, color="lightgray", label="on the draw's test part")
            right.hist(pool, bins=bins, histtype="step", color="black", lw=1.4, label="on the pool (the guarantee's)")
            right.axvline(100 * check.epsilon, color="black", ls="--", label=f"epsilon = {100 * check.epsilon:g} %")
            held = sum(c.held for c in comparison.risk)
            draws = sum(c.draws for c in comparison.risk)
            right.set_title(f"held on the pool in {held} of {draws} re-splits (needs {1 - check.delta:.0%})",
                            fontsize=8)
            right.set_xlabel("images right at the last exit,\nwrong where they left (%)")
            right.set_ylabel("re-splits")
            right.legend(fontsize=6)
        else:
            _empty(right, "no re-splits (policies.resplits = 0)")
    return save(fig, folder, "policies")
