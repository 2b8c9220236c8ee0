"""Exit policies: when does a sample leave the cascade, and with which prediction?

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


def log_softmax(z: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """(..., C) -> (..., C), stable."""
    z = np.asarray(z, dtype=dtype)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Summary:
    """What the policies read of a set of per-exit distributions: each (n, K)."""

    top1: np.ndarray  # largest probability
    top2: np.ndarray  # second largest
    neg_entropy: np.ndarray  # sum_c p log p (<= 0)
    pred: np.ndarray  # argmax (ties: the lowest class)
    true_prob: np.ndarray  # probability of the label


# Rows per chunk: the (rows, K, C) float32 temporaries of ImageNet logits stay at a few tens of MB.
CHUNK = 2048


def _summary_of(lp: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """(top1, top2, sum p log p, argmax, p(label)) of log-probabilities lp (rows, K, C); lp is
    overwritten (the argmax entry becomes -inf to find the runner-up without sorting)."""
    p = np.exp(lp)
    neg_entropy = (p * lp).sum(axis=-1)
    true = np.take_along_axis(p, labels[:, None, None], axis=2)[..., 0]
    pred = lp.argmax(axis=-1)
    top1 = np.take_along_axis(p, pred[..., None], axis=2)[..., 0]
    np.put_along_axis(lp, pred[..., None], -np.inf, axis=2)
    top2 = np.exp(lp.max(axis=-1)) if lp.shape[-1] > 1 else np.zeros_like(top1)
    return top1, top2, neg_entropy, pred, true


def _join(parts: list[tuple[np.ndarray, ...]]) -> Summary:
    return Summary(*(np.concatenate([part[i] for part in parts]).astype(np.int64 if i == 3 else np.float64)
                     for i in range(5)))


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def exit_summary(logits: np.ndarray, labels: np.ndarray, temperatures: np.ndarray | None = None) -> Summary:
    """Each exit's own softmax (of z / t_k with temperatures), in float32, a chunk of rows at a time."""
    z, y = _check(logits, labels)
    scale = np.float32(1) if temperatures is None else np.asarray(temperatures, dtype=np.float32)[None, :, None]
    return _join([_summary_of(log_softmax(z[rows] / scale, np.float32), y[rows]) for rows in _chunks(len(y))])


def summaries(logits: np.ndarray, labels: np.ndarray) -> tuple[Summary, Summary]:
    """(each exit's own softmax, the normalised product of experts prod_{j<=k} p_j at each exit), in
    float32 from one log-softmax pass."""
    z, y = _check(logits, labels)
    own, joint = [], []
    for rows in _chunks(len(y)):
        lp = log_softmax(z[rows], np.float32)
        joint.append(_summary_of(log_softmax(np.cumsum(lp, axis=1), np.float32), y[rows]))
        own.append(_summary_of(lp, y[rows]))
    return _join(own), _join(joint)


def _decisions(s: Summary, labels: np.ndarray, confidence: np.ndarray) -> Decisions:
    return Decisions(confidence=np.asarray(confidence, dtype=np.float64), correct=s.pred == labels[:, None],
                     true_prob=s.true_prob)


def max_softmax_policy(logits: np.ndarray, labels: np.ndarray, s: Summary | None = None) -> Decisions:
    z, y = _check(logits, labels)
    s = s or exit_summary(z, y)
    conf = np.concatenate([max_softmax(z[i:i + CHUNK])[0] for i in range(0, len(y), CHUNK)])  # as budget.csv
    return _decisions(s, y, conf)


def entropy_policy(logits: np.ndarray, labels: np.ndarray, s: Summary | None = None) -> Decisions:
    z, y = _check(logits, labels)
    s = s or exit_summary(z, y)
    return _decisions(s, y, s.neg_entropy)


def margin_policy(logits: np.ndarray, labels: np.ndarray, s: Summary | None = None) -> Decisions:
    z, y = _check(logits, labels)
    s = s or exit_summary(z, y)
    return _decisions(s, y, s.top1 - s.top2)


def fit_temperatures(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 50,
                     max_samples: int = 5_000) -> np.ndarray:
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
        zk = np.asarray(z[:, k], dtype=np.float32)  # (n, C)
        true = zk[np.arange(len(y)), y].astype(np.float64)
        b = 1.0
        for _ in range(iterations):
            p = np.exp(log_softmax(np.float32(b) * zk, np.float32))
            mean = (p * zk).sum(axis=1, dtype=np.float64)
            grad = float(np.mean(mean - true))
            hess = float(np.mean((p * zk * zk).sum(axis=1, dtype=np.float64) - mean * mean))
            step = grad / hess if hess > 1e-12 else np.sign(grad)
            b_new = float(np.clip(b - step, 1 / 20, 20))
            converged = abs(b_new - b) < 1e-6 * b
            b = b_new
            if converged:
                break
        temps.append(1.0 / b)
    return np.array(temps)


def temperature_policy(logits: np.ndarray, labels: np.ndarray, temperatures: np.ndarray) -> Decisions:
    z, y = _check(logits, labels)
    s = exit_summary(z, y, temperatures)
    return _decisions(s, y, s.top1)


def poe_policy(logits: np.ndarray, labels: np.ndarray, joint: Summary | None = None) -> Decisions:
    """joint: the product-of-experts summary (`summaries(...)[1]`), if already computed."""
    z, y = _check(logits, labels)
    joint = joint or summaries(z, y)[1]
    return _decisions(joint, y, joint.top1)


def caching_policy(logits: np.ndarray, labels: np.ndarray, s: Summary | None = None) -> Decisions:
    z, y = _check(logits, labels)
    s = s or exit_summary(z, y)
    best = np.maximum.accumulate(s.top1, axis=1)
    source = np.zeros(s.top1.shape, dtype=np.int64)  # which exit's prediction is held at exit k
    for k in range(1, s.top1.shape[1]):
        source[:, k] = np.where(s.top1[:, k] > best[:, k - 1], k, source[:, k - 1])
    held = Summary(top1=best, top2=s.top2, neg_entropy=s.neg_entropy,
                   pred=np.take_along_axis(s.pred, source, axis=1),
                   true_prob=np.take_along_axis(s.true_prob, source, axis=1))
    return _decisions(held, y, best)


def gate_features(s: Summary) -> np.ndarray:
    """Per exit: max probability, margin and entropy: (n, K, 3)."""
    return np.stack([s.top1, s.top1 - s.top2, -s.neg_entropy], axis=-1)


def fit_gate(logits: np.ndarray, labels: np.ndarray, s: Summary | None = None, *,
             max_samples: int = 20_000) -> list:
    """Per exit k, a logistic regression (scikit-learn) of "exit k is right" on the features of exits
    1..k, fitted on these (calibration) samples (at most max_samples, evenly spaced); None where every
    sample is right or every one wrong."""
    from sklearn.linear_model import LogisticRegression

    z, y = _check(logits, labels)
    s = s or exit_summary(z, y)
    features = gate_features(s)
    right = s.pred == y[:, None]
    if len(y) > max_samples:  # a handful of coefficients per exit: more samples only cost time
        keep = np.linspace(0, len(y) - 1, max_samples).round().astype(int)
        features, right, y = features[keep], right[keep], y[keep]
    gates = []
    for k in range(z.shape[1]):
        target = right[:, k]
        if target.all() or not target.any():
            gates.append(None)
            continue
        gates.append(LogisticRegression(max_iter=1000).fit(features[:, : k + 1].reshape(len(y), -1), target))
    return gates


def gate_policy(logits: np.ndarray, labels: np.ndarray, gates: list, s: Summary | None = None) -> Decisions:
    z, y = _check(logits, labels)
    s = s or exit_summary(z, y)
    features = gate_features(s)
    conf = np.empty(s.top1.shape)
    for k, gate in enumerate(gates):
        if gate is None:  # the calibration split was all right (or all wrong) here: keep max softmax
            conf[:, k] = s.top1[:, k]
        else:
            conf[:, k] = gate.predict_proba(features[:, : k + 1].reshape(len(y), -1))[:, 1]
    return _decisions(s, y, conf)


POLICIES: dict[str, Callable[..., Decisions]] = {
    "max_softmax": max_softmax_policy, "entropy": entropy_policy, "margin": margin_policy,
    "temperature": temperature_policy, "poe": poe_policy, "caching": caching_policy, "gate": gate_policy,
}


def decide(logits_cal: np.ndarray, labels_cal: np.ndarray, logits_test: np.ndarray,
           labels_test: np.ndarray, *, temperatures: np.ndarray | None = None
           ) -> dict[str, tuple[Decisions, Decisions]]:
    """Every policy on both splits: name -> (calibration, test) decisions; fitted ones fit on calibration
    (temperatures: `fit_temperatures`' answer, when the caller already has it).
    Each split's per-exit softmax and product of experts are summarised once and shared; the two
    splits are worked on in two threads (numpy's array loops release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    if temperatures is None:
        temperatures = fit_temperatures(logits_cal, labels_cal)

    def split(z: np.ndarray, y: np.ndarray) -> tuple[dict[str, Decisions], Summary]:
        own, joint = summaries(z, y)
        return {"max_softmax": max_softmax_policy(z, y, own), "entropy": entropy_policy(z, y, own),
                "margin": margin_policy(z, y, own), "temperature": temperature_policy(z, y, temperatures),
                "poe": poe_policy(z, y, joint), "caching": caching_policy(z, y, own)}, own

    with ThreadPoolExecutor(max_workers=2) as pool:
        (cal, cal_own), (test, test_own) = pool.map(lambda zy: split(*zy), ((logits_cal, labels_cal),
                                                                           (logits_test, labels_test)))
    gates = fit_gate(logits_cal, labels_cal, cal_own)
    cal["gate"] = gate_policy(logits_cal, labels_cal, gates, cal_own)
    test["gate"] = gate_policy(logits_test, labels_test, gates, test_own)
    return {name: (cal[name], test[name]) for name in POLICIES}


def monotonicity_violations(d: Decisions) -> float:
    """Share of samples whose probability of the true class falls from some exit to the next."""
    return float((np.diff(d.true_prob, axis=1) < 0).any(axis=1).mean())


# --------------------------------------------------------------------------------------------------
# Thresholds with a guarantee


def risk_controlled_thresholds(confidence: np.ndarray, correct: np.ndarray, *, epsilon: float,
                               delta: float, max_candidates: int = 500) -> tuple[np.ndarray, float]:
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
    early_right = ok[np.arange(len(ok))[None, :], exits]  # (L, n)
    return (ok[None, :, -1] & ~early_right).sum(axis=1)
