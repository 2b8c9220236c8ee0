"""Exit policies (issue #19): when does a sample leave the cascade, and with which prediction?

The paper's policy is max softmax: leave at the first exit k whose largest class probability clears
T_k. Every policy here needs only the per-exit logits that `dvt collect` stores, so none costs any
training. A policy turns the logits (n, K, C) of a split into `Decisions`:

* confidence (n, K): the score compared with T_k (higher = surer);
* correct (n, K): whether the prediction the sample would leave with at exit k is right.

The budgets then work exactly as for max softmax (`dvt.thresholds`): thresholds fitted on the
calibration split so that the paper's q^k shares leave at each exit, evaluated on the test split.
Policies that fit something (temperatures, the gate) fit it on the calibration split only.

| name        | confidence at exit k                                         | prediction at exit k        |
|-------------|--------------------------------------------------------------|-----------------------------|
| max_softmax | max_c p_k(c) (the paper; dvt.logits.max_softmax, bit for bit) | argmax p_k                  |
| entropy     | -H(p_k)                                                       | argmax p_k                  |
| margin      | top-1 minus top-2 probability of p_k                          | argmax p_k                  |
| temperature | max softmax of z_k / t_k, t_k fitted by NLL on calibration    | argmax p_k                  |
| poe         | max of the product of experts prod_{j<=k} p_j, normalised     | its argmax                  |
|             | (Jazbec et al., NeurIPS 2023: anytime, keeps earlier evidence)|                             |
| caching     | max_{j<=k} max p_j                                            | that most confident exit's  |
| gate        | P(exit k is right), a logistic regression on max probability, | argmax p_k                  |
|             | margin and entropy of exits 1..k, fitted on calibration       |                             |

`risk_controlled_thresholds` chooses max-softmax thresholds with a guarantee instead of a budget
(Learn then Test, Angelopoulos et al. 2021): the accuracy drop against the last exit stays at most
epsilon with probability at least 1 - delta over the draw of the calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dvt.errors import DvtError
from dvt.logits import max_softmax


@dataclass(frozen=True)
class Decisions:
    confidence: np.ndarray  # (n, K) float64
    correct: np.ndarray  # (n, K) bool
    true_prob: np.ndarray  # (n, K) float64: the policy's probability of the true class at exit k


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 3 or y.shape != (z.shape[0],):
        raise DvtError(f"policies need logits (n, K, C) and labels (n,); got {z.shape} and {y.shape}")
    return z, y


def log_softmax(z: np.ndarray) -> np.ndarray:
    """(..., C) -> (..., C) float64, stable."""
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _take(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """values (n, K, C), labels (n,) -> values[i, k, labels[i]]: (n, K)."""
    return np.take_along_axis(values, labels[:, None, None], axis=2)[..., 0]


def _from_probs(p: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> Decisions:
    pred = p.argmax(axis=-1)
    return Decisions(confidence=confidence.astype(np.float64), correct=pred == labels[:, None],
                     true_prob=_take(p, labels))


def max_softmax_policy(logits: np.ndarray, labels: np.ndarray) -> Decisions:
    z, y = _check(logits, labels)
    conf, pred = max_softmax(z)  # float32, as the budget stage uses it
    p = np.exp(log_softmax(z))
    return Decisions(confidence=conf.astype(np.float64), correct=pred == y[:, None], true_prob=_take(p, y))


def entropy_policy(logits: np.ndarray, labels: np.ndarray) -> Decisions:
    z, y = _check(logits, labels)
    logp = log_softmax(z)
    p = np.exp(logp)
    return _from_probs(p, y, (p * logp).sum(axis=-1))  # -H


def margin_policy(logits: np.ndarray, labels: np.ndarray) -> Decisions:
    z, y = _check(logits, labels)
    p = np.exp(log_softmax(z))
    top2 = -np.partition(-p, 1, axis=-1)[..., :2] if p.shape[-1] > 1 else np.concatenate([p, 0 * p], axis=-1)
    return _from_probs(p, y, top2[..., 0] - top2[..., 1])


def fit_temperatures(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 50,
                     max_samples: int = 20_000) -> np.ndarray:
    """Per exit, the temperature t > 0 minimising the mean NLL of softmax(z / t): (K,).

    The NLL is convex in b = 1 / t, with derivative mean(E_p[z] - z_y) and second derivative
    mean(Var_p[z]) >= 0, so Newton's method on b converges in a few steps (each one softmax over
    the split; b is kept in [1/20, 20]). At most `max_samples` samples (evenly spaced) are used: one
    number per exit is fitted, and more samples only cost time."""
    z, y = _check(logits, labels)
    if len(y) > max_samples:
        keep = np.linspace(0, len(y) - 1, max_samples).round().astype(int)
        z, y = z[keep], y[keep]
    temps = []
    for k in range(z.shape[1]):
        zk = z[:, k].astype(np.float64)  # (n, C)
        true = zk[np.arange(len(y)), y]
        b = 1.0
        for _ in range(iterations):
            p = np.exp(log_softmax(b * zk))
            mean = (p * zk).sum(axis=1)
            grad = float(np.mean(mean - true))
            hess = float(np.mean((p * zk * zk).sum(axis=1) - mean * mean))
            step = grad / hess if hess > 1e-12 else np.sign(grad)
            b_new = float(np.clip(b - step, 1 / 20, 20))
            if abs(b_new - b) < 1e-9:
                break
            b = b_new
        temps.append(1.0 / b)
    return np.array(temps)


def temperature_policy(logits: np.ndarray, labels: np.ndarray, temperatures: np.ndarray) -> Decisions:
    z, y = _check(logits, labels)
    p = np.exp(log_softmax(z / np.asarray(temperatures)[None, :, None]))
    return _from_probs(p, y, p.max(axis=-1))


def poe_policy(logits: np.ndarray, labels: np.ndarray) -> Decisions:
    z, y = _check(logits, labels)
    joint = log_softmax(np.cumsum(log_softmax(z), axis=1))  # (n, K, C): normalised prod_{j<=k} p_j
    p = np.exp(joint)
    return _from_probs(p, y, p.max(axis=-1))


def caching_policy(logits: np.ndarray, labels: np.ndarray) -> Decisions:
    z, y = _check(logits, labels)
    p = np.exp(log_softmax(z))
    conf = p.max(axis=-1)  # (n, K)
    best = np.maximum.accumulate(conf, axis=1)
    source = np.zeros(conf.shape, dtype=np.int64)  # which exit's prediction is held at exit k
    for k in range(1, conf.shape[1]):
        source[:, k] = np.where(conf[:, k] > best[:, k - 1], k, source[:, k - 1])
    held = np.take_along_axis(p, source[..., None], axis=1)  # (n, K, C)
    return _from_probs(held, y, best)


def gate_features(logits: np.ndarray) -> np.ndarray:
    """Per exit: max probability, margin and entropy: (n, K, 3)."""
    logp = log_softmax(logits)
    p = np.exp(logp)
    top2 = -np.partition(-p, 1, axis=-1)[..., :2]
    return np.stack([top2[..., 0], top2[..., 0] - top2[..., 1], -(p * logp).sum(axis=-1)], axis=-1)


def fit_gate(logits: np.ndarray, labels: np.ndarray) -> list:
    """Per exit k, a logistic regression (scikit-learn) of "exit k is right" on the features of exits
    1..k, fitted on these (calibration) samples; None where every sample is right or every one wrong."""
    from sklearn.linear_model import LogisticRegression

    z, y = _check(logits, labels)
    features = gate_features(z)
    right = z.argmax(axis=-1) == y[:, None]
    gates = []
    for k in range(z.shape[1]):
        target = right[:, k]
        if target.all() or not target.any():
            gates.append(None)
            continue
        gates.append(LogisticRegression(max_iter=1000).fit(features[:, : k + 1].reshape(len(y), -1), target))
    return gates


def gate_policy(logits: np.ndarray, labels: np.ndarray, gates: list) -> Decisions:
    z, y = _check(logits, labels)
    features = gate_features(z)
    p = np.exp(log_softmax(z))
    conf = np.empty(z.shape[:2])
    for k, gate in enumerate(gates):
        if gate is None:  # the calibration split was all right (or all wrong) here: keep max softmax
            conf[:, k] = p[:, k].max(axis=-1)
        else:
            conf[:, k] = gate.predict_proba(features[:, : k + 1].reshape(len(y), -1))[:, 1]
    return _from_probs(p, y, conf)


FITTED = ("temperature", "gate")
POLICIES: dict[str, Callable[..., Decisions]] = {
    "max_softmax": max_softmax_policy, "entropy": entropy_policy, "margin": margin_policy,
    "temperature": temperature_policy, "poe": poe_policy, "caching": caching_policy, "gate": gate_policy,
}


def decide(logits_cal: np.ndarray, labels_cal: np.ndarray, logits_test: np.ndarray,
           labels_test: np.ndarray) -> dict[str, tuple[Decisions, Decisions]]:
    """Every policy on both splits: name -> (calibration, test) decisions; fitted ones fit on calibration."""
    fitted = {"temperature": fit_temperatures(logits_cal, labels_cal), "gate": fit_gate(logits_cal, labels_cal)}
    out = {}
    for name, policy in POLICIES.items():
        extra = (fitted[name],) if name in FITTED else ()
        out[name] = (policy(logits_cal, labels_cal, *extra), policy(logits_test, labels_test, *extra))
    return out


def monotonicity_violations(d: Decisions) -> float:
    """Share of samples whose probability of the true class falls from some exit to the next."""
    return float((np.diff(d.true_prob, axis=1) < 0).any(axis=1).mean())


# --------------------------------------------------------------------------------------------------
# Thresholds with a guarantee


def risk_controlled_thresholds(confidence: np.ndarray, correct: np.ndarray, *, epsilon: float,
                               delta: float, max_candidates: int = 2000) -> tuple[np.ndarray, float]:
    """Max-softmax thresholds (one value lambda for exits 1..K-1) such that, with probability at least
    1 - delta over the calibration draw, the share of samples the last exit gets right but the early
    exit gets wrong is at most epsilon (an upper bound of the accuracy drop against the last exit).

    Learn then Test with fixed-sequence testing: lambda runs from 1 (nobody leaves early, risk 0)
    downwards over the calibration confidences (at most max_candidates of them, evenly spread); each
    lambda's null "risk > epsilon" is rejected when
    the binomial tail P(Binomial(n, epsilon) <= observed losses) is at most delta; the answer is the
    lowest lambda before the first non-rejection. Returns (thresholds (K,), lambda)."""
    from scipy.stats import binom

    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n, K = conf.shape
    if not (0 < epsilon < 1 and 0 < delta < 1):
        raise DvtError(f"epsilon ({epsilon}) and delta ({delta}) must lie in (0, 1)")
    candidates = np.unique(conf[:, :-1])[::-1]  # descending: each lambda lets more samples out early
    if len(candidates) > max_candidates:  # an even grid over them keeps the search vectorised and short
        candidates = candidates[np.linspace(0, len(candidates) - 1, max_candidates).round().astype(int)]
    losses = np.concatenate([_losses(conf, ok, candidates[i:i + 64]) for i in range(0, len(candidates), 64)])
    rejected = binom.cdf(losses, n, epsilon) <= delta  # (L,)
    # fixed sequence: accept lambdas in order until the first one whose null stands
    stop = int(np.argmin(rejected)) if not rejected.all() else len(rejected)
    chosen = float(candidates[stop - 1]) if stop > 0 else float("inf")
    T = np.append(np.full(K - 1, chosen if np.isfinite(chosen) else 1e8), -1e8)
    return T, chosen


def _losses(conf: np.ndarray, ok: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """For each lambda (L,): how many samples the last exit gets right and their early exit wrong."""
    K = conf.shape[1]
    leave = conf[None, :, :-1] >= lambdas[:, None, None]  # (L, n, K-1)
    exits = np.where(leave.any(axis=2), leave.argmax(axis=2), K - 1)  # (L, n)
    early_right = np.take_along_axis(ok[None].repeat(len(lambdas), 0), exits[..., None], axis=2)[..., 0]
    return (ok[None, :, -1] & ~early_right).sum(axis=1)
