"""The paper's budgets on one run's logits: reading a run's logits.parquet (checked against its settings
and checkpoint), fitting the thresholds of budgets p = 1..eval.num_budgets, the budgeted test curve with
its two limits, operating points for a target cost or accuracy, and reading the thresholds back from
budget.csv. Shared by the budget, policies, speed and predict stages.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dvt import checkpoint, layout, thresholds
from dvt.config import Config
from dvt.errors import DvtError, damaged
from dvt.logits import SplitLogits, check_matches, read_logits, read_metadata
from dvt.thresholds import OperatingPoint

TEST = "test"
# The budgets named in metrics.json: low, middle and high on the paper's 59-budget scale.
HEADLINE_BUDGETS = (10, 20, 30)


def number(x: float | None) -> float | None:
    """JSON has no NaN or inf: an undefined number is null."""
    return None if x is None or not math.isfinite(x) else float(x)


def per_exit(values: Any) -> dict[str, float | None]:
    return {f"exit{k + 1}": number(float(v)) for k, v in enumerate(values)}


def read_run_logits(config: Config, run: str, *, keep_logits: bool = False
                    ) -> tuple[Path, SplitLogits, SplitLogits, np.ndarray]:
    """(logits path, threshold split, test split, cumulative GMACs (K,)), checked against this run;
    keep_logits: the splits keep their (n, K, C) logits (the exit policies read them)."""
    path = config.run_dir(run) / layout.LOGITS
    sha = checkpoint.verified_sha256(checkpoint.finished_path(config, run))
    check_matches(read_metadata(path), config_dict=checkpoint.run_fingerprint(config, run), checkpoint_sha256=sha,
                  path=path)
    split = config.eval.threshold_split
    official = config.eval.rounding == "official"
    table = read_logits(path, logits=official or keep_logits)
    for name in (split, TEST):
        if name not in table.splits:
            raise DvtError(f"{path} has no {name!r} split (eval.threshold_split = {split!r}; it holds "
                           f"{', '.join(table.splits) or 'none'}); rerun `{config.command('collect', run)}`")
    if table.num_exits != config.run(run).num_exits:  # a file edited by hand: its metadata said otherwise
        raise DvtError(f"{path} has {table.num_exits} exits but run {run} has {config.run(run).num_exits}; "
                       f"rerun `{config.command('collect', run)}`")
    fit, test = table[split], table[TEST]
    if official:  # the authors' confidence: torch's softmax, then its max
        fit, test = (dataclasses.replace(s, confidence=thresholds.torch_confidence(s.logits),
                                         logits=s.logits if keep_logits else None) for s in (fit, test))
    return path, fit, test, table.cumulative_gmacs


def fit_budgets(config: Config, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q (P,), thresholds (P, K)) of the paper's budgets fitted on confidence (n, K) of the threshold
    split, with eval.rounding; one row with T = -1e8 for a one-exit run."""
    num_exits = confidence.shape[1]
    if num_exits == 1:
        return np.array([np.nan]), np.array([[thresholds.EVERYBODY_EXITS]])
    ev = config.eval
    q = np.arange(1, ev.num_budgets + 1) * ev.q_step
    fractions = thresholds.budget_fractions(num_exits, num_budgets=ev.num_budgets, q_step=ev.q_step)
    counts = thresholds.official_counts(len(confidence), q, num_exits) if ev.rounding == "official" else None
    try:
        return q, thresholds.fit_thresholds(confidence, fractions, counts=counts)
    except DvtError as err:
        raise DvtError(f"eval.q_step = {ev.q_step} with eval.num_budgets = {ev.num_budgets}: {err}") from None


def curve_with_limits(test: SplitLogits, F: np.ndarray,
                      budgets: thresholds.BudgetCurve) -> tuple[np.ndarray, np.ndarray]:
    """The test curve's (GMACs, accuracy) points plus its two limits: all at exit 1, all at exit K."""
    top1 = 100.0 * test.correct.mean(axis=0)
    return (np.concatenate([budgets.gmacs, [F[0], F[-1]]]), np.concatenate([budgets.accuracy, [top1[0], top1[-1]]]))


def operating_point(point: OperatingPoint, test: SplitLogits, F: np.ndarray, target: float) -> dict[str, Any]:
    on_test = thresholds.evaluate(test.confidence, test.correct, F, point.thresholds)
    return {
        "target": target,
        "q": number(point.q),
        "thresholds": [float(t) for t in point.thresholds],
        "fit": {"gmacs": number(point.gmacs), "accuracy": number(point.accuracy)},
        "test": {"gmacs": number(on_test.gmacs[0]), "accuracy": number(on_test.accuracy[0]),
                 "exit_fractions": [float(f) for f in on_test.exit_fractions[0]]},
    }


def targets(fit: SplitLogits, test: SplitLogits, F: np.ndarray, *, target_gmacs: float | None,
             target_accuracy: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target_gmacs is not None:
        point = thresholds.thresholds_for_gmacs(fit.confidence, F, target_gmacs, correct_cal=fit.correct)
        out["gmacs"] = operating_point(point, test, F, target_gmacs)
    if target_accuracy is not None:
        point = thresholds.thresholds_for_accuracy(fit.confidence, fit.correct, F, target_accuracy)
        out["accuracy"] = operating_point(point, test, F, target_accuracy)
    return out


def print_target(stage: str, run: str, kind: str, found: dict[str, Any]) -> None:
    unit = "GMACs" if kind == "gmacs" else "% top-1"
    shown = ", ".join(f"{t:.6g}" for t in found["thresholds"])
    print(f"dvt {stage}: {run}: target {found['target']:g} {unit} -> thresholds [{shown}] "
          f"(test: {found['test']['gmacs']:.4g} GMACs, {found['test']['accuracy']:.2f}% top-1)")


def read_budget_thresholds(config: Config, run: str, num_exits: int) -> pd.DataFrame:
    """budget.csv indexed by budget p, its gmacs and threshold_0..threshold_{K-1} columns checked and float64."""
    path = config.run_dir(run) / layout.BUDGET
    if not path.is_file():
        raise DvtError(f"{path} not found: run `{config.command('budget', run)}` first")
    columns = ["gmacs", *(f"threshold_{k}" for k in range(num_exits))]
    with damaged(path, config.command("budget", run)):
        frame = pd.read_csv(path)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DvtError(f"{path} lacks the columns {', '.join(missing)}; rerun `{config.command('budget', run)}`")
        frame[columns] = frame[columns].astype(np.float64)
        return frame.set_index(frame["budget"].astype(int), drop=False)


def budget_rows(config: Config, run: str, budgets: tuple[int, ...] | list[int], num_exits: int, *,
                asked_by: str) -> pd.DataFrame:
    """The rows of budgets p (each in budget.csv, else one DvtError line naming `asked_by`, the setting or
    flag that asked for it, e.g. "speed.budgets")."""
    frame = read_budget_thresholds(config, run, num_exits)
    missing = [p for p in budgets if p not in frame.index]
    if missing:
        raise DvtError(f"{asked_by} asks for budget p = {missing[0]}, but {config.run_dir(run) / 'budget.csv'} holds "
                       f"budgets {frame.index.min()}..{frame.index.max()} (eval.num_budgets); choose from those")
    return frame.loc[list(budgets)]
