"""Budgeted-batch early exit: fit confidence thresholds per budget and evaluate them (paper §5).

Conventions used throughout (the authors' inference.py):
  * `confidence` is (n, K): max softmax of each of the K exits for n samples.
  * A sample leaves at the first exit k with c_k >= T_k; the last exit takes everyone left, so
    T_K = -1e8. T_k = +1e8 means nobody leaves at k.
  * Budget p = 1..P uses q = p * q_step and target exit shares pi_k = q^k / sum_j q^j.
  * Costs are *cumulative* GMACs F_k (running exits 1..k); expected cost = sum_k (n_k / n) * F_k.
  * Exits are 0-based in arrays, accuracies are percent.

Every function works on whole arrays: the budgets are an extra leading axis (P), never a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from dvt.errors import DvtError

NOBODY_EXITS = 1e8
EVERYBODY_EXITS = -1e8

# floor(n * pi_k) with pi_k from floating-point powers: a share that is mathematically an integer
# number of samples (e.g. n = 300, pi = 1/3) may come out as 99.999...; this slack keeps it at 100.
_FLOOR_SLACK = 1e-6

# The geometric family is searched over log q in this range; at its ends the shares are within
# 1e-4 of "all at the first exit" and "all at the last exit", which are added as explicit candidates.
_LOG_Q_RANGE = (np.log(1e-4), np.log(1e4))

# Budgets are fitted in chunks so the (P, n) work arrays stay small for long searches.
_CHUNK = 64

WhenShort = Literal["official", "lowest"]


# --------------------------------------------------------------------------------------------
# Validation


def _as_confidence(confidence: npt.ArrayLike) -> np.ndarray:
    c = np.asarray(confidence)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise DvtError(f"confidence must be an (n, K) array with n, K >= 1, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.floating):
        raise DvtError(f"confidence must be floating point, got dtype {c.dtype}")
    if not np.isfinite(c).all():
        bad = int((~np.isfinite(c)).sum())
        raise DvtError(f"confidence has {bad} NaN or infinite values; the logits it came from are broken")
    # float32 -> float64 is exact, so thresholds copied from confidences compare exactly.
    return c.astype(np.float64, copy=False)


def _as_fractions(fractions: npt.ArrayLike, num_exits: int) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim == 1:
        f = f[None, :]
    if f.ndim != 2 or f.shape[1] != num_exits or f.shape[0] < 1:
        raise DvtError(f"fractions must be (P, K) with K = {num_exits} exits, got shape {np.shape(fractions)}")
    if not np.isfinite(f).all() or (f <= 0).any() or (f > 1).any():
        raise DvtError(f"exit fractions must lie in (0, 1]; got values from {np.nanmin(f)} to {np.nanmax(f)}")
    sums = f.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
    if bad.size:
        raise DvtError(f"each budget's exit fractions must sum to 1; budget row {int(bad[0])} sums to {sums[bad[0]]}")
    return f


def _as_thresholds(thresholds: npt.ArrayLike, num_exits: int) -> tuple[np.ndarray, bool]:
    """Return (P, K) thresholds and whether the input was a single (K,) row."""
    t = np.asarray(thresholds, dtype=np.float64)
    single = t.ndim == 1
    if single:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != num_exits:
        raise DvtError(f"thresholds must be (K,) or (P, K) with K = {num_exits}, got shape {np.shape(thresholds)}")
    if np.isnan(t).any():
        raise DvtError("thresholds contain NaN")
    return t, single


def _as_gmacs(cumulative_gmacs: npt.ArrayLike, num_exits: int) -> np.ndarray:
    g = np.asarray(cumulative_gmacs, dtype=np.float64)
    if g.shape != (num_exits,):
        raise DvtError(f"cumulative_gmacs must have one value per exit ({num_exits}), got shape {g.shape}")
    if not np.isfinite(g).all() or (g < 0).any() or (np.diff(g) < 0).any():
        raise DvtError(f"cumulative_gmacs must be finite, >= 0 and non-decreasing, got {g.tolist()}")
    return g


def _check_when_short(when_short: str) -> None:
    if when_short not in ("official", "lowest"):
        raise DvtError(f"when_short = {when_short!r} is not allowed: 'official' or 'lowest'")


def _as_correct(correct: npt.ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    r = np.asarray(correct)
    if r.dtype != np.bool_:
        raise DvtError(f"correct must be a boolean array, got dtype {r.dtype}")
    if r.shape != shape:
        raise DvtError(f"correct has shape {r.shape} but confidence has shape {shape}")
    return r


# --------------------------------------------------------------------------------------------
# Budgets and thresholds


def geometric_fractions(q: npt.ArrayLike, num_exits: int) -> np.ndarray:
    """Exit shares pi_k = q^k / sum_j q^j for each q: (P,) -> (P, K).

    Computed from k * log q minus its row maximum so large and tiny q neither overflow nor
    underflow to an all-zero row.
    """
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if (q <= 0).any() or not np.isfinite(q).all():
        raise DvtError(f"q must be finite and > 0, got {q.min()} .. {q.max()}")
    logw = np.log(q)[:, None] * np.arange(1, num_exits + 1)[None, :]  # (P, K)
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def budget_fractions(num_exits: int, *, num_budgets: int = 59, q_step: float = 0.05) -> np.ndarray:
    """Target exit shares of the paper's budgets, (num_budgets, K); row p-1 uses q = p * q_step."""
    if num_exits < 1 or num_budgets < 1 or not q_step > 0:
        raise DvtError(f"need num_exits >= 1, num_budgets >= 1 and q_step > 0; "
                       f"got {num_exits}, {num_budgets}, {q_step}")
    return geometric_fractions(np.arange(1, num_budgets + 1) * q_step, num_exits)


def _sort_orders(conf: np.ndarray) -> list[np.ndarray]:
    """Per non-final exit, sample indices by decreasing confidence: K-1 arrays of shape (n,)."""
    return [np.argsort(-conf[:, k], kind="stable") for k in range(conf.shape[1] - 1)]


def official_counts(n: int, q: npt.ArrayLike, num_exits: int) -> np.ndarray:
    """How many of n samples the authors' search lets out at each exit for each q: (P, K) int64.

    Their code (MSDNet's `find_threshold`, reused by DVT) computes the shares in float32 torch,
    exp(log q * [1..K]) normalised, and takes floor(n * share) of the float32 product, which falls one
    short where n * share is a whole number that float32 lands just below (n = 139, q = 0.3: 99 and 29
    where exact arithmetic gives 100 and 30). Exact arithmetic (`fit_thresholds`' default) is ours.
    """
    import torch

    q32 = torch.tensor(np.atleast_1d(np.asarray(q, dtype=np.float64)), dtype=torch.float32)[:, None]  # (P, 1)
    probs = torch.exp(torch.log(q32) * torch.arange(1, num_exits + 1, dtype=torch.float32))  # (P, K)
    probs = probs / probs.sum(dim=1, keepdim=True)
    return torch.floor(torch.tensor(float(n), dtype=torch.float32) * probs).to(torch.int64).numpy()


def torch_confidence(logits: np.ndarray) -> np.ndarray:
    """The authors' confidence: max of torch's float32 softmax over the classes, (..., C) -> (...)."""
    import torch

    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1).max(dim=-1).values.numpy()


def _fit(conf: np.ndarray, fractions: np.ndarray, orders: list[np.ndarray], when_short: WhenShort,
         counts: np.ndarray | None = None) -> np.ndarray:
    """The official procedure for P budgets at once; conf (n, K), fractions (P, K) -> T (P, K).
    counts (P, K): how many leave at each exit, if not floor(n * fractions) in exact arithmetic."""
    n, num_exits = conf.shape
    P = fractions.shape[0]
    out_n = np.floor(n * fractions + _FLOOR_SLACK).astype(np.int64) if counts is None else counts  # (P, K)
    T = np.full((P, num_exits), NOBODY_EXITS)
    T[:, -1] = EVERYBODY_EXITS
    remaining = np.ones((P, n), dtype=bool)  # not yet exited, per budget
    for k, order in enumerate(orders):
        c_sorted = conf[order, k]  # (n,) decreasing
        # rank[p, i]: how many still-remaining samples sit at sorted positions 0..i for budget p;
        # the first position where it reaches out_n is the out_n-th remaining sample.
        rank = np.cumsum(remaining[:, order], axis=1, dtype=np.int32)  # (P, n)
        left = rank[:, -1]
        want = out_n[:, k]
        if when_short == "lowest":
            want = np.minimum(want, left)
        found = (want >= 1) & (want <= left)
        pos = np.argmax(rank >= want[:, None], axis=1)
        T[:, k] = np.where(found, c_sorted[pos], NOBODY_EXITS)
        # Ties with T_k exit too (>=), exactly as the official code marks them.
        remaining &= conf[None, :, k] < T[:, k, None]
    return T


def fit_thresholds(confidence: npt.ArrayLike, fractions: npt.ArrayLike, *,
                   when_short: WhenShort = "official", counts: npt.ArrayLike | None = None) -> np.ndarray:
    """Thresholds (P, K) that send the share fractions[p, k] of the fitting set out at exit k (§5).

    For each exit k < K in order: out_n = floor(n * pi_k); among the samples not yet exited, sorted by
    decreasing c_k, the out_n-th one's confidence becomes T_k (out_n = 0: T_k = +1e8); then every
    remaining sample with c_k >= T_k exits, so ties at T_k make exit k take more than out_n.
    T_K = -1e8.

    If fewer than out_n samples remain (only possible after ties at earlier exits), `when_short`
    decides: "official" keeps T_k = +1e8 as the authors' inference.py does (nobody exits at k, the
    remaining samples move on); "lowest" uses the lowest remaining confidence (all of them exit at k).
    The last column of `fractions` is only checked (rows must sum to 1): exit K takes the rest.
    out_n gets a 1e-6 slack before the floor so float rounding of n * pi_k cannot drop a sample;
    `counts` (P, K) replaces out_n, e.g. `official_counts` for the authors' float32 rounding.
    """
    _check_when_short(when_short)
    conf = _as_confidence(confidence)
    frac = _as_fractions(fractions, conf.shape[1])
    if counts is not None:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != frac.shape or (counts < 0).any() or (counts.sum(axis=1) > conf.shape[0]).any():
            raise DvtError(f"counts {counts.shape} must be (budgets, exits) = {frac.shape}, >= 0, at most n per budget")
    return _fit(conf, frac, _sort_orders(conf), when_short, counts)


def _exit_index(conf: np.ndarray, T: np.ndarray) -> np.ndarray:
    """conf (n, K), T (P, K) -> (P, n) first k with c_k >= T_k; the last exit takes the rest."""
    P, K = T.shape
    exits = np.full((P, conf.shape[0]), K - 1, dtype=np.int64)
    # From the second-to-last exit back to the first, so the earliest passing exit is written last.
    for k in range(K - 2, -1, -1):
        exits[conf[None, :, k] >= T[:, k, None]] = k
    return exits


def assign_exits(confidence: npt.ArrayLike, thresholds: npt.ArrayLike) -> np.ndarray:
    """0-based exit of every sample: (n,) for thresholds (K,), (P, n) for thresholds (P, K).

    The last exit takes every sample that no earlier exit took, whatever T_K holds.
    """
    conf = _as_confidence(confidence)
    T, single = _as_thresholds(thresholds, conf.shape[1])
    exits = _exit_index(conf, T)
    return exits[0] if single else exits


def _exit_shares(exits: np.ndarray, num_exits: int) -> np.ndarray:
    """(P, n) exit indices -> (P, K) fraction of samples leaving at each exit."""
    return np.stack([(exits == k).mean(axis=1) for k in range(num_exits)], axis=1)


def _accuracy(exits: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(P, n) exit indices, correct (n, K) -> (P,) percent correct at the chosen exits."""
    return 100.0 * correct[np.arange(correct.shape[0])[None, :], exits].mean(axis=1)


@dataclass(frozen=True, eq=False)
class BudgetCurve:
    """One row per budget: the thresholds and what they give on the evaluated set."""

    thresholds: np.ndarray  # (P, K)
    gmacs: np.ndarray  # (P,) expected cumulative GMACs per sample
    accuracy: np.ndarray  # (P,) percent top-1
    exit_fractions: np.ndarray  # (P, K) share of samples leaving at each exit

    def to_frame(self) -> pd.DataFrame:
        """Columns budget (1-based p), gmacs, accuracy, exit_fraction_k, threshold_k (k 0-based)."""
        P, K = self.thresholds.shape
        cols: dict[str, np.ndarray] = {
            "budget": np.arange(1, P + 1),
            "gmacs": self.gmacs,
            "accuracy": self.accuracy,
        }
        cols.update({f"exit_fraction_{k}": self.exit_fractions[:, k] for k in range(K)})
        cols.update({f"threshold_{k}": self.thresholds[:, k] for k in range(K)})
        return pd.DataFrame(cols)


def evaluate(confidence: npt.ArrayLike, correct: npt.ArrayLike, cumulative_gmacs: npt.ArrayLike,
             thresholds: npt.ArrayLike) -> BudgetCurve:
    """Accuracy and expected GMACs = sum_k (n_k / n) * F_k of each budget's thresholds (§5)."""
    conf = _as_confidence(confidence)
    ok = _as_correct(correct, conf.shape)
    F = _as_gmacs(cumulative_gmacs, conf.shape[1])
    T, _ = _as_thresholds(thresholds, conf.shape[1])
    exits = _exit_index(conf, T)
    shares = _exit_shares(exits, conf.shape[1])
    return BudgetCurve(thresholds=T, gmacs=shares @ F, accuracy=_accuracy(exits, ok), exit_fractions=shares)


# --------------------------------------------------------------------------------------------
# Operating points for a user's target cost or accuracy


@dataclass(frozen=True, eq=False)
class OperatingPoint:
    """One set of thresholds and what it gives on the calibration set it was chosen on.

    q is the geometric-family parameter; 0.0 means "everything at the first exit" and inf
    "everything at the last exit" (the family's two limits).
    """

    q: float
    thresholds: np.ndarray  # (K,)
    gmacs: float
    accuracy: float | None  # percent; None when no labels were given
    exit_fractions: np.ndarray  # (K,)


class _Sweep:
    """Fits and scores many q at once on one calibration set, sorting it only once."""

    def __init__(self, conf: np.ndarray, F: np.ndarray, correct: np.ndarray | None, when_short: WhenShort):
        _check_when_short(when_short)
        self.conf, self.F, self.correct, self.when_short = conf, F, correct, when_short
        self.orders = _sort_orders(conf)
        K = conf.shape[1]
        # The family's limits as explicit thresholds: all at exit 1 (q -> 0), all at exit K (q -> inf).
        first = np.full(K, EVERYBODY_EXITS)
        last = np.full(K, NOBODY_EXITS)
        last[-1] = EVERYBODY_EXITS
        self.q: list[np.ndarray] = []
        self.T: list[np.ndarray] = []
        self.gmacs: list[np.ndarray] = []
        self.acc: list[np.ndarray] = []
        self._add(np.array([0.0, np.inf]), np.stack([first, last]))

    def _add(self, q: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        exits = _exit_index(self.conf, T)
        gmacs = _exit_shares(exits, self.conf.shape[1]) @ self.F
        acc = _accuracy(exits, self.correct) if self.correct is not None else np.full(len(q), np.nan)
        self.q.append(q)
        self.T.append(T)
        self.gmacs.append(gmacs)
        self.acc.append(acc)
        return gmacs, acc

    def run(self, log_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit and score every q = exp(log_q); returns (gmacs, accuracy), each (len(log_q),)."""
        q = np.exp(log_q)
        out = []
        for s in range(0, len(q), _CHUNK):
            qs = q[s:s + _CHUNK]
            T = _fit(self.conf, geometric_fractions(qs, self.conf.shape[1]), self.orders, self.when_short)
            out.append(self._add(qs, T))
        return np.concatenate([g for g, _ in out]), np.concatenate([a for _, a in out])

    def point(self, pick: int) -> OperatingPoint:
        """Candidate number `pick`, counting every candidate scored so far in order."""
        q, T = np.concatenate(self.q), np.concatenate(self.T)
        g, a = np.concatenate(self.gmacs), np.concatenate(self.acc)
        i = int(pick)
        exits = _exit_index(self.conf, T[i:i + 1])
        return OperatingPoint(q=float(q[i]), thresholds=T[i].copy(), gmacs=float(g[i]),
                              accuracy=None if self.correct is None else float(a[i]),
                              exit_fractions=_exit_shares(exits, self.conf.shape[1])[0])

    def all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q, gmacs and accuracy of every candidate so far, each (num_candidates,)."""
        return np.concatenate(self.q), np.concatenate(self.gmacs), np.concatenate(self.acc)


def thresholds_for_gmacs(confidence_cal: npt.ArrayLike, cumulative_gmacs: npt.ArrayLike, target: float, *,
                         correct_cal: npt.ArrayLike | None = None, when_short: WhenShort = "official",
                         rounds: int = 8, grid: int = 17) -> OperatingPoint:
    """Thresholds of the geometric family whose expected GMACs on the calibration set meet `target`.

    Search: the expected cost rises with q (shares move to later exits) up to one-sample rounding
    wobbles, so each round evaluates `grid` values of log q spread over the current bracket and
    narrows it to the two neighbours around the first crossing of the target; the family's limits
    (everything at exit 1 / at exit K) are candidates too. The answer is the candidate with the
    largest cost that does not exceed the target (a budget is an upper limit), which is within one
    sample's cost step below it. The default 8 rounds of 17 points pin log q to ~1e-8.
    Pass correct_cal to get the calibration accuracy too.
    """
    if rounds < 1 or grid < 3:
        raise DvtError(f"need rounds >= 1 and grid >= 3, got {rounds} and {grid}")
    conf = _as_confidence(confidence_cal)
    F = _as_gmacs(cumulative_gmacs, conf.shape[1])
    correct = None if correct_cal is None else _as_correct(correct_cal, conf.shape)
    lo, hi = float(F[0]), float(F[-1])
    slack = 1e-9 * max(hi, 1.0)
    if not np.isfinite(target) or target < lo - slack or target > hi + slack:
        raise DvtError(f"target {target} GMACs is outside what this cascade can spend per image: "
                       f"{lo:g} (exit 1 only) to {hi:g} (every exit)")
    sweep = _Sweep(conf, F, correct, when_short)
    a, b = _LOG_Q_RANGE
    if conf.shape[1] > 1:
        for _ in range(rounds):
            log_q = np.linspace(a, b, grid)
            gmacs, _ = sweep.run(log_q)
            above = np.flatnonzero(gmacs > target + slack)
            if above.size == 0 or above[0] == 0:
                break
            a, b = log_q[above[0] - 1], log_q[above[0]]
    _, g, _ = sweep.all()
    feasible = np.flatnonzero(g <= target + slack)  # never empty: the all-at-exit-1 candidate costs F_1
    return sweep.point(feasible[np.argmax(g[feasible])])


def thresholds_for_accuracy(confidence_cal: npt.ArrayLike, correct_cal: npt.ArrayLike, cumulative_gmacs: npt.ArrayLike,
                            target: float, *, when_short: WhenShort = "official", grid: int = 257,
                            refine: int = 3) -> OperatingPoint:
    """The cheapest member of the geometric family reaching `target` percent top-1 on calibration.

    Accuracy need not rise monotonically with q, so this scans a dense grid of log q (plus the
    family's two limits), takes the cheapest candidate reaching the target, and `refine` times
    rescans the interval between it and its smaller-q neighbour, where a cheaper one may hide.
    Accuracy is a step function of q with one-sample wiggles, so "cheapest" is up to this grid
    (log q steps of 0.07, then 64 times finer per refinement): a narrower q-interval elsewhere that
    reaches the target by one lucky sample can be missed.
    """
    if grid < 3 or refine < 0:
        raise DvtError(f"need grid >= 3 and refine >= 0, got {grid} and {refine}")
    conf = _as_confidence(confidence_cal)
    correct = _as_correct(correct_cal, conf.shape)
    F = _as_gmacs(cumulative_gmacs, conf.shape[1])
    if not np.isfinite(target) or not 0.0 <= target <= 100.0:
        raise DvtError(f"target accuracy {target} is not a percentage in [0, 100]")
    sweep = _Sweep(conf, F, correct, when_short)
    a, b = _LOG_Q_RANGE
    if conf.shape[1] > 1:
        log_q = np.linspace(a, b, grid)
        for _ in range(refine + 1):
            gmacs, acc = sweep.run(log_q)
            hits = np.flatnonzero(acc >= target - 1e-9)
            if hits.size == 0:
                break
            j = hits[np.argmin(gmacs[hits])]
            lo = log_q[j - 1] if j > 0 else a - (log_q[1] - log_q[0])
            log_q = np.linspace(lo, log_q[j], 65)
    q, g, acc = sweep.all()
    hits = np.flatnonzero(acc >= target - 1e-9)
    if hits.size == 0:
        best = int(np.argmax(acc))
        raise DvtError(f"target top-1 {target}% is not reachable on the calibration set: the best this "
                       f"cascade reaches is {acc[best]:.2f}% (at {g[best]:.4g} GMACs)")
    return sweep.point(hits[np.argmin(g[hits])])


# --------------------------------------------------------------------------------------------
# Reading accuracy-vs-cost curves (speed-up ratios of §7.3 and Table 3)


def _as_curve(curve_gmacs: npt.ArrayLike, curve_acc: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(curve_gmacs, dtype=np.float64).ravel()
    a = np.asarray(curve_acc, dtype=np.float64).ravel()
    if g.shape != a.shape or g.size == 0:
        raise DvtError(f"a curve needs as many GMACs as accuracies (>= 1), got {g.size} and {a.size}")
    if not (np.isfinite(g).all() and np.isfinite(a).all()):
        raise DvtError("curve values must be finite")
    order = np.argsort(g, kind="stable")
    return g[order], a[order]


def accuracy_at_gmacs(curve_gmacs: npt.ArrayLike, curve_acc: npt.ArrayLike, g: npt.ArrayLike) -> float | np.ndarray:
    """Accuracy of the curve at cost g, linearly interpolated between points sorted by GMACs.

    Outside [min GMACs, max GMACs] the answer is NaN: the curve says nothing there and a silent
    extrapolation would invent a speed-up. Points with equal GMACs count once, with their best
    accuracy.
    """
    xs, ys = _as_curve(curve_gmacs, curve_acc)
    ux, start = np.unique(xs, return_index=True)
    uy = np.maximum.reduceat(ys, start)
    gq = np.asarray(g, dtype=np.float64)
    out = np.interp(gq, ux, uy)
    out = np.where((gq < ux[0]) | (gq > ux[-1]) | np.isnan(gq), np.nan, out)
    return float(out) if out.ndim == 0 else out


def mean_accuracy(curve_gmacs: npt.ArrayLike, curve_acc: npt.ArrayLike, lo: float, hi: float,
                  points: int = 1024) -> float:
    """Mean accuracy of the curve over the costs [lo, hi] (the area under it divided by the width),
    by the trapezoid rule on `points` costs; at a single cost (hi <= lo), that cost's accuracy. NaN if
    the range leaves the curve."""
    if hi <= lo:
        return float(accuracy_at_gmacs(curve_gmacs, curve_acc, lo))
    g = np.linspace(lo, hi, points)
    return float(np.trapezoid(accuracy_at_gmacs(curve_gmacs, curve_acc, g), g) / (hi - lo))


def gmacs_for_accuracy(curve_gmacs: npt.ArrayLike, curve_acc: npt.ArrayLike, acc: float) -> float:
    """Smallest GMACs at which the curve (linear between points sorted by GMACs) reaches `acc`.

    This is where the curve's monotone upper envelope (best accuracy at cost <= g) first reaches acc.
    If the cheapest point already reaches it, that point's GMACs is returned (the curve does not go
    lower); NaN if the curve never reaches acc.
    """
    xs, ys = _as_curve(curve_gmacs, curve_acc)
    if ys[0] >= acc:
        return float(xs[0])
    # Segment i joins points i and i+1; the first segment whose right end reaches acc holds the
    # crossing (every earlier point is below acc, else an earlier segment would have).
    reach = np.flatnonzero(ys[1:] >= acc)
    if reach.size == 0:
        return float("nan")
    i = int(reach[0])
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return float(x0 + (acc - y0) / (y1 - y0) * (x1 - x0))
