"""`dvt budget --run R`: fit the paper's early-exit thresholds and evaluate them on the test split (§5).

Reads runs/R/seed<S>/logits.parquet (refused unless it was written for this run's settings and checkpoint),
fits one set of thresholds per budget p = 1..eval.num_budgets on eval.threshold_split and evaluates
them on the test split:

* runs/R/seed<S>/budget.csv, one row per budget: budget (p), q (= p * eval.q_step), gmacs (expected
  cumulative GMACs per test image), accuracy (test top-1, %), exit_fraction_k and threshold_k
  (k 0-based). A one-exit run has the single row of its one operating point (q empty).
* runs/R/seed<S>/eval.json: per-exit cumulative GMACs and test top-1; for a cascade the curve's
  extremes, DVT's accuracy at each exit's cost and the cost at which DVT matches each exit's accuracy;
  and the operating points for --target-gmacs / --target-accuracy.
* runs/R/seed<S>/metrics.json, the run's headline for `dvc exp show` (numbers only, in git, under
  the run's name R): test top-1 per exit, the GMACs of running every exit, and for a cascade top-1 and GMACs at the named
  budgets p = 10 / 20 / 30.
  Only this run's own outputs are read: comparisons with other runs (the paper's speed-ups against
  one-exit models) are `dvt report`'s, so each run's stage depends on its own files alone.

Reading the curve: linear interpolation between budgets, plus the family's two limits (everyone
leaves at exit 1, everyone runs to the last exit), which are real operating points; outside the
curve's cost range the answer is null (no extrapolation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dvt import layout, thresholds
from dvt.atomic import atomic_path, write_json
from dvt.budgets import (
    HEADLINE_BUDGETS,
    curve_with_limits,
    fit_budgets,
    number,
    per_exit,
    print_target,
    read_run_logits,
    targets,
)
from dvt.config import Config


def _dvt_summary(curve: tuple[np.ndarray, np.ndarray], F: np.ndarray, top1: np.ndarray,
                 budgets: thresholds.BudgetCurve) -> dict[str, Any]:
    g, a = curve
    best = int(np.argmax(budgets.accuracy))
    at_cost = thresholds.accuracy_at_gmacs(g, a, F)
    need = np.array([thresholds.gmacs_for_accuracy(g, a, t) for t in top1])
    return {
        "budgets": int(len(budgets.gmacs)),
        "min_gmacs": number(budgets.gmacs.min()),
        "max_gmacs": number(budgets.gmacs.max()),
        "max_accuracy": number(budgets.accuracy[best]),
        "max_accuracy_gmacs": number(budgets.gmacs[best]),
        # DVT's accuracy when it may spend what exiting at k costs (F_k).
        "accuracy_at_exit_gmacs": per_exit(at_cost),
        # What DVT spends to match exit k's own accuracy, and F_k over that.
        "gmacs_at_exit_accuracy": per_exit(need),
        "speedup_at_exit_accuracy": per_exit(F / need),
    }


def _headline(top1: np.ndarray, F: np.ndarray, frame) -> dict[str, Any]:
    """metrics.json: a handful of rounded numbers (top-1 in %, GMACs to 4 significant digits)."""
    out: dict[str, Any] = {"top1": {f"exit{k + 1}": round(float(t), 2) for k, t in enumerate(top1)},
                           "gmacs": float(f"{F[-1]:.4g}")}
    rows = frame.set_index("budget")
    named = {f"p{p}": {"top1": round(float(rows.at[p, "accuracy"]), 2), "gmacs": float(f"{rows.at[p, 'gmacs']:.4g}")}
             for p in HEADLINE_BUDGETS if len(F) > 1 and p in rows.index}
    return {**out, "budget": named} if named else out


def run(config: Config, *, run: str, target_gmacs: float | None = None,
        target_accuracy: float | None = None) -> dict[str, Any]:
    """Write runs/<run>/seed<S>/budget.csv, eval.json and metrics.json; returns the eval.json content."""
    rc = config.run(run)
    _, fit, test, F = read_run_logits(config, run)
    K = len(F)
    # Targets first: an impossible target fails before any output is written.
    points = targets(fit, test, F, target_gmacs=target_gmacs, target_accuracy=target_accuracy)
    q, T = fit_budgets(config, fit.confidence)
    budgets = thresholds.evaluate(test.confidence, test.correct, F, T)
    frame = budgets.to_frame()
    frame.insert(1, "q", q)
    top1 = 100.0 * test.correct.mean(axis=0)
    metrics: dict[str, Any] = {
        "run": run,
        "seed": config.seed,
        "grids": list(rc.exit_grids),
        "threshold_split": config.eval.threshold_split,
        "test_images": int(len(test.labels)),
        "gmacs": per_exit(F),
        "top1": per_exit(top1),
    }
    if K > 1:
        curve = curve_with_limits(test, F, budgets)
        metrics["dvt"] = _dvt_summary(curve, F, top1, budgets)
    if points:
        metrics["targets"] = points

    folder = config.run_dir(run)
    with atomic_path(folder / layout.BUDGET) as tmp:
        frame.to_csv(tmp, index=False)
    write_json(folder / layout.EVAL, metrics)
    # under the run's name, so that `dvc exp show` names the run in every column (`dvt.top1.exit2`)
    write_json(folder / layout.METRICS, {run: _headline(top1, F, frame)})
    for kind, found_point in points.items():
        print_target("budget", run, kind, found_point)
    if K > 1:
        d = metrics["dvt"]
        print(f"dvt budget: {run}: {len(frame)} budgets, {d['min_gmacs']:.4g}-{d['max_gmacs']:.4g} GMACs, "
              f"best {d['max_accuracy']:.2f}% (exits alone {' / '.join(f'{t:.2f}' for t in top1)}) "
              f"-> {folder / 'budget.csv'}")
    else:
        print(f"dvt budget: {run}: one exit, {F[0]:.4g} GMACs, {top1[0]:.2f}% top-1 -> {folder / 'eval.json'}")
    return metrics
