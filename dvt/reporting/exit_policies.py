"""Exit policies against the paper's max softmax, on the DVT run (`dvt policies`' files, every seed).

Each policy is compared with max softmax at the cost max softmax spends at the named budgets
(p = 10 / 20 / 30): the gain is the policy's top-1 there minus max softmax's, per seed, then averaged.
It "beats" max softmax where the mean gain is positive; the gain "exceeds the seed spread" where it is
larger than the larger of the two policies' seed standard deviations of top-1 at that cost (with one
seed there is no spread, and that verdict is None). The risk-controlled thresholds "hold" where the
share of calibration re-splits whose thresholds kept the risk on the pool they were drawn from at most
epsilon reaches 1 - delta (`dvt.stages.policies.risk_control` says why the pool, not the test part).
Nothing here is written by hand: every verdict is computed from policies.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from dvt.reporting.inputs import RunFiles

WORDS = {
    "max_softmax": "max softmax (the paper)",
    "entropy": "negative entropy of the exit's softmax",
    "margin": "top-1 minus top-2 probability",
    "temperature": "max softmax after per-exit temperature scaling (fitted on calibration)",
    "poe": "product of experts over the exits run so far (anytime)",
    "caching": "the most confident exit so far, with its prediction (anytime)",
    "gate": "learned gate: logistic regression on max probability, margin and entropy of the exits so far",
}


def _std(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


@dataclass(frozen=True)
class AtBudget:
    """One policy at the cost max softmax spends at one named budget (means over seeds)."""

    budget: str  # "p10"
    gmacs: float
    top1: float | None
    top1_std: float | None
    gain: float | None  # points over max softmax
    spread: float | None  # the larger seed standard deviation of the two top-1s; None with one seed
    beats: bool | None  # gain > 0
    beyond_spread: bool | None  # gain > spread


@dataclass(frozen=True)
class PolicyRow:
    name: str
    words: str
    mean_top1: float | None  # over the GMACs range every policy covers
    mean_top1_std: float | None
    at: tuple[AtBudget, ...]
    monotonicity_violations: float

    @property
    def beats_everywhere(self) -> bool:
        return bool(self.at) and all(a.beats for a in self.at)


@dataclass(frozen=True)
class RiskCheck:
    """The risk-controlled thresholds of one seed."""

    seed: int
    epsilon: float
    delta: float
    threshold: float | None  # lambda; None: nobody may leave early
    gmacs: float
    accuracy: float
    accuracy_drop: float
    risk: float
    held: int  # re-splits whose thresholds kept the pool's risk at most epsilon (the guarantee's event)
    held_on_test_part: int  # ... and the risk of the draw's test part
    draws: int
    risks: tuple[float, ...]  # per re-split, on the pool
    test_part_risks: tuple[float, ...]

    @property
    def holds(self) -> bool | None:
        return None if self.draws == 0 else self.held >= (1 - self.delta) * self.draws


@dataclass(frozen=True)
class PolicyComparison:
    run: str
    seeds: int
    common_gmacs_range: tuple[float, float]
    rows: tuple[PolicyRow, ...]
    risk: tuple[RiskCheck, ...]

    @property
    def better(self) -> list[str]:
        """Policies whose mean top-1 beats max softmax's at every named budget."""
        return [r.name for r in self.rows if r.name != "max_softmax" and r.beats_everywhere]

    @property
    def risk_holds(self) -> bool | None:
        found = [c.holds for c in self.risk]
        return None if not found or None in found else all(found)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["better_than_max_softmax"] = self.better
        out["risk_holds"] = self.risk_holds
        for check in out["risk"]:
            del check["risks"], check["test_part_risks"]  # per-draw values stay in each run's policies.json
        return out


def compare_policies(run: RunFiles | None) -> PolicyComparison | None:
    if run is None or not run.is_cascade:
        return None
    files = [s.policies for s in run.seeds]
    names = list(files[0]["policies"])
    budgets = list(files[0]["policies"]["max_softmax"]["at_budgets"])
    rows = []
    for name in names:
        per_seed = [f["policies"][name] for f in files]
        at = []
        for b in budgets:
            top1 = [p["at_budgets"][b]["top1"] for p in per_seed]
            base = [f["policies"]["max_softmax"]["at_budgets"][b]["top1"] for f in files]
            gains = [p["at_budgets"][b]["gain"] for p in per_seed]
            if None in top1 or None in gains:
                at.append(AtBudget(b, float(np.mean([p["at_budgets"][b]["gmacs"] for p in per_seed])),
                                   None, None, None, None, None, None))
                continue
            gain = float(np.mean(gains))
            stds = [s for s in (_std(top1), _std(base)) if s is not None]
            spread = max(stds) if stds else None
            at.append(AtBudget(budget=b, gmacs=float(np.mean([p["at_budgets"][b]["gmacs"] for p in per_seed])),
                               top1=float(np.mean(top1)), top1_std=_std(top1), gain=gain, spread=spread,
                               beats=gain > 0, beyond_spread=None if spread is None else abs(gain) > spread))
        means = [p["mean_top1"] for p in per_seed]
        rows.append(PolicyRow(name=name, words=WORDS.get(name, name),
                              mean_top1=None if None in means else float(np.mean(means)),
                              mean_top1_std=None if None in means else _std(means), at=tuple(at),
                              monotonicity_violations=float(np.mean([p["monotonicity_violations"] for p in per_seed]))))
    risk = []
    for seed, f in zip(run.seeds, files):
        r = f.get("risk_controlled")
        if r is None:
            continue
        risk.append(RiskCheck(seed=seed.seed, epsilon=r["epsilon"], delta=r["delta"], threshold=r["lambda"],
                              gmacs=r["test"]["gmacs"], accuracy=r["test"]["accuracy"],
                              accuracy_drop=r["test"]["accuracy_drop"], risk=r["test"]["risk"],
                              held=r["resplits"]["held"], held_on_test_part=r["resplits"]["held_on_test_part"],
                              draws=r["resplits"]["draws"], risks=tuple(r["resplits"]["risks"]),
                              test_part_risks=tuple(r["resplits"]["test_part_risks"])))
    lo = float(np.mean([f["common_gmacs_range"][0] for f in files]))
    hi = float(np.mean([f["common_gmacs_range"][1] for f in files]))
    return PolicyComparison(run=run.name, seeds=len(files), common_gmacs_range=(lo, hi), rows=tuple(rows),
                            risk=tuple(risk))
