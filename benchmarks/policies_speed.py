"""Every exit policy over the paper's 59 budgets on ImageNet-sized logits (issue #19: under 10 s).

    python benchmarks/policies_speed.py [--n 50000] [--classes 1000] [--threads 1]

Random logits (float32, 3 exits; the true class boosted more at later exits, so the policies have
something to rank) for a calibration and a test split of n samples each. Timed: every policy's
decisions on both splits (fits on calibration included), the 59 budgets' thresholds fitted on
calibration and evaluated on test for each, and the risk-controlled thresholds. Prints the seconds of
each part and the total (one run; the machine's speed drifts, so repeat it to see the spread).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dvt import policies, thresholds


def logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    z = rng.standard_normal((n, 3, classes), dtype=np.float32)
    z[np.arange(n), :, y] += rng.uniform(0, 6, size=(n, 1)).astype(np.float32) * np.array([0.6, 0.8, 1.0], np.float32)
    return z, y


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    (zc, yc), (zt, yt) = logits(args.n, args.classes, 0), logits(args.n, args.classes, 1)
    F = np.array([0.472, 1.46, 3.50])  # DVT-T2T-ViT-12's cumulative GMACs
    seconds: dict[str, float] = {}
    tic = time.perf_counter()
    decided = policies.decide(zc, yc, zt, yt)
    seconds["decisions (7 policies, both splits)"] = time.perf_counter() - tic
    t = time.perf_counter()
    fractions = thresholds.budget_fractions(3)
    for cal, test in decided.values():
        T = thresholds.fit_thresholds(cal.confidence, fractions)
        thresholds.evaluate(test.confidence, test.correct, F, T)
    seconds["59 budgets x 7 policies"] = time.perf_counter() - t
    t = time.perf_counter()
    cal = decided["max_softmax"][0]
    policies.risk_controlled_thresholds(cal.confidence, cal.correct, epsilon=0.02, delta=0.1)
    seconds["risk-controlled thresholds"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - tic
    for part, s in seconds.items():
        print(f"{part}: {s:.2f} s")
    return seconds


if __name__ == "__main__":
    main()
