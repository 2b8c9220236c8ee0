"""`dvt policies --run R`: every exit policy of `dvt.policies` on one run's logits, at the paper's budgets.

Reads what `dvt budget` reads (runs/R/seed<S>/logits.parquet, checked against the run's settings and
checkpoint) and fits each policy's thresholds exactly as `dvt budget` fits max softmax's: the same
calibration split, the same eval.num_budgets budgets, the same eval.rounding. So the max_softmax rows
are budget.csv's rows (a test holds them equal to the last digit), and every other policy is compared
with it on equal terms. Writes:

* runs/R/seed<S>/policies.csv: budget.csv's columns (budget, q, gmacs, accuracy, exit_fraction_k,
  threshold_k) with a first column `policy`, one block of rows per policy.
* runs/R/seed<S>/policies.json, per policy: top-1 with every image at each exit, the mean top-1 over
  the GMACs range every policy covers (the area under the accuracy-GMACs curve over its width),
  top-1 and the gain over max softmax at the cost max softmax spends at budgets p = 10 / 20 / 30,
  the share of test images whose probability of the true class falls from one exit to the next, and
  the --target-gmacs / --target-accuracy operating points when asked; the fitted temperatures; and
  the risk-controlled thresholds (policies.epsilon, policies.delta) with their check over
  policies.resplits random calibration/test re-splits of the pooled logits.

A one-exit run has one operating point, the same for every policy: its rows are written all the same,
so that both engines run the stage for every run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from dvt import layout, policies, thresholds
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
from dvt.logits import SplitLogits


def mean_top1(curve: tuple[np.ndarray, np.ndarray], lo: float, hi: float) -> float | None:
    """Mean of the curve's top-1 over [lo, hi] (area under it / width); at a single cost, that cost's top-1."""
    return number(thresholds.mean_accuracy(*curve, lo, hi))


def _lost(conf: np.ndarray, correct: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(n,) bool: the images right at the last exit and wrong at the one they leave at (the risk's losses)."""
    exits = thresholds.assign_exits(conf, T)
    return correct[:, -1] & ~correct[np.arange(len(exits)), exits]


def risk_control(config: Config, fit: SplitLogits, test: SplitLogits, F: np.ndarray) -> dict[str, Any] | None:
    """Max-softmax thresholds with the Learn-then-Test guarantee, on the test split and over re-splits."""
    if len(F) < 2:
        return None
    pc = config.policies
    T, lam = policies.risk_controlled_thresholds(fit.confidence, fit.correct, epsilon=pc.epsilon, delta=pc.delta)
    on_test = thresholds.evaluate(test.confidence, test.correct, F, T)
    # The guarantee is over the calibration draw: pool both splits and draw calibration splits of the same
    # size from the pool. The pool is then the population the calibration is sampled from, and the
    # guarantee is about the chosen thresholds' risk on it. The risk on the draw's test part is shown
    # too, but it is not the guarantee's quantity: a draw whose calibration part happened to hold few
    # losses leaves more of them in its test part (same pool), so the two are anti-correlated and the
    # test part exceeds epsilon more often than 1 - delta promises, besides its own sampling noise.
    conf = np.concatenate([fit.confidence, test.confidence]).astype(np.float64)
    correct = np.concatenate([fit.correct, test.correct])
    n_cal = len(fit.labels)
    rng = np.random.default_rng(config.seed)
    pool_risks, test_risks = [], []
    for _ in range(pc.resplits):
        order = rng.permutation(len(conf))
        cal, rest = order[:n_cal], order[n_cal:]
        T_draw, _ = policies.risk_controlled_thresholds(conf[cal], correct[cal], epsilon=pc.epsilon, delta=pc.delta)
        lost = _lost(conf, correct, T_draw)  # (pool,)
        pool_risks.append(float(lost.mean()))
        test_risks.append(float(lost[rest].mean()))
    return {
        "epsilon": pc.epsilon, "delta": pc.delta,
        "lambda": number(lam),
        "thresholds": [float(t) for t in T],
        "test": {"gmacs": number(on_test.gmacs[0]), "accuracy": number(on_test.accuracy[0]),
                 "accuracy_drop": number(100.0 * test.correct[:, -1].mean() - on_test.accuracy[0]),
                 "risk": float(_lost(test.confidence, test.correct, T).mean()),
                 "exit_fractions": [float(f) for f in on_test.exit_fractions[0]]},
        "resplits": {"draws": pc.resplits, "required_share": 1 - pc.delta,
                     "held": sum(r <= pc.epsilon for r in pool_risks),
                     "held_on_test_part": sum(r <= pc.epsilon for r in test_risks),
                     "risks": [round(r, 6) for r in pool_risks],
                     "test_part_risks": [round(r, 6) for r in test_risks]},
    }


def run(config: Config, *, run: str, target_gmacs: float | None = None,
        target_accuracy: float | None = None) -> dict[str, Any]:
    """Write runs/<run>/seed<S>/policies.csv and policies.json; returns the policies.json content."""
    rc = config.run(run)
    _, fit, test, F = read_run_logits(config, run, keep_logits=True)
    temperatures = policies.fit_temperatures(fit.logits, fit.labels)
    decided = policies.decide(fit.logits, fit.labels, test.logits, test.labels, temperatures=temperatures)
    if config.eval.rounding == "official":  # the authors' confidence (torch's softmax), as dvt budget uses
        decided["max_softmax"] = tuple(dataclasses.replace(d, confidence=s.confidence.astype(np.float64))
                                       for d, s in zip(decided["max_softmax"], (fit, test)))

    frames, curves, found, per_policy = [], {}, {}, {}
    for name, (d_fit, d_test) in decided.items():
        p_fit = dataclasses.replace(fit, confidence=d_fit.confidence, correct=d_fit.correct, logits=None)
        p_test = dataclasses.replace(test, confidence=d_test.confidence, correct=d_test.correct, logits=None)
        # Targets first: an impossible target fails before any output is written.
        found[name] = targets(p_fit, p_test, F, target_gmacs=target_gmacs, target_accuracy=target_accuracy)
        q, T = fit_budgets(config, p_fit.confidence)
        curve = thresholds.evaluate(p_test.confidence, p_test.correct, F, T)
        frame = curve.to_frame()
        frame.insert(0, "policy", name)
        frame.insert(2, "q", q)
        frames.append(frame)
        curves[name] = curve_with_limits(p_test, F, curve)
        per_policy[name] = {"top1": per_exit(100.0 * d_test.correct.mean(axis=0)),
                            "monotonicity_violations": policies.monotonicity_violations(d_test)}

    lo = max(float(c[0].min()) for c in curves.values())
    hi = min(float(c[0].max()) for c in curves.values())
    reference = frames[list(decided).index("max_softmax")].set_index("budget")
    named = {f"p{p}": float(reference.at[p, "gmacs"]) for p in HEADLINE_BUDGETS
             if len(F) > 1 and p in reference.index}
    base = {k: thresholds.accuracy_at_gmacs(*curves["max_softmax"], g) for k, g in named.items()}
    for name, curve in curves.items():
        at = {k: thresholds.accuracy_at_gmacs(*curve, g) for k, g in named.items()}
        per_policy[name].update({
            "mean_top1": mean_top1(curve, lo, hi),
            "at_budgets": {k: {"gmacs": g, "top1": number(at[k]), "gain": number(at[k] - base[k])}
                           for k, g in named.items()},
            **({"targets": found[name]} if found[name] else {}),
        })

    out = {
        "run": run, "seed": config.seed, "grids": list(rc.exit_grids), "test_images": int(len(test.labels)),
        "threshold_split": config.eval.threshold_split, "rounding": config.eval.rounding,
        "gmacs": per_exit(F), "common_gmacs_range": [lo, hi],
        "temperatures": [float(t) for t in temperatures],
        "policies": per_policy,
        "risk_controlled": risk_control(config, fit, test, F),
    }
    folder = config.run_dir(run)
    with atomic_path(folder / layout.POLICIES_CSV) as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    write_json(folder / layout.POLICIES, out)
    for name in decided:
        for kind, point in found[name].items():
            print_target("policies", f"{run} ({name})", kind, point)
    best = max(per_policy, key=lambda n: per_policy[n]["mean_top1"] or -np.inf)
    rc_out = out["risk_controlled"]
    risk = "" if rc_out is None else (
        f"; risk-controlled (epsilon {rc_out['epsilon']:g}, delta {rc_out['delta']:g}): test drop "
        f"{rc_out['test']['accuracy_drop']:.2f} points at {rc_out['test']['gmacs']:.4g} GMACs, held on the pool in "
        f"{rc_out['resplits']['held']}/{rc_out['resplits']['draws']} re-splits")
    budgets = f"{len(frames[0])} budget{'s' * (len(frames[0]) != 1)}"
    print(f"dvt policies: {run}: {len(per_policy)} policies x {budgets}; best mean top-1 "
          f"{best} {per_policy[best]['mean_top1']:.2f}% (max softmax {per_policy['max_softmax']['mean_top1']:.2f}%)"
          f"{risk} -> {folder / 'policies.csv'}")
    return out
