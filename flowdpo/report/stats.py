"""Statistics used across flowdpo (reports, evaluation, the signal check, the experiment analysis): small
standalone functions that import nothing else of the project.

- `wilson_interval`: a binomial proportion's 95% interval (accuracies, pair accuracies);
- `paired_difference`: mean difference of paired 0/1 outcomes with a normal-approximation interval;
- `clustered_bootstrap_difference`: the same for several samples per question, resampling questions (the
  unit that is independent), with a percentile interval;
- `auc`: the probability that a positive scores above a negative (Mann-Whitney), with a bootstrap interval;
- `progressive_curve` / `moving_accuracy`: accuracy curves over a run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any


def progressive_curve(correct: list[bool]) -> list[float]:
    """Acc_prog(N) = (1/N) * sum_{i<=N} correct_i for N = 1..len(correct)."""
    out: list[float] = []
    k = 0
    for n, c in enumerate(correct, start=1):
        k += int(bool(c))
        out.append(k / n)
    return out


def moving_accuracy(correct: list[bool], window: int) -> list[float]:
    """Trailing-window accuracy; entry i averages correct[max(0, i-window+1) : i+1]."""
    if window < 1:
        raise ValueError("window must be >= 1")
    out: list[float] = []
    k = 0
    for i, c in enumerate(correct):
        k += int(bool(c))
        if i >= window:
            k -= int(bool(correct[i - window]))
        out.append(k / min(i + 1, window))
    return out


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials (95% for z=1.96). (0, 1) when n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # The bounds contain p exactly (k = n gives 1.0, not 0.9999999999999999: plots take hi - p as an error bar).
    return (
        0.0 if k == 0 else min(p, max(0.0, center - half)),
        1.0 if k == n else max(p, min(1.0, center + half)),
    )


def paired_difference(a: list[bool], b: list[bool], z: float = 1.96) -> dict[str, Any]:
    """Mean of a_i - b_i over paired outcomes, with a normal-approximation CI and discordant counts."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    n = len(a)
    d = [int(x) - int(y) for x, y in zip(a, b)]
    only_a = sum(1 for x in d if x > 0)
    only_b = sum(1 for x in d if x < 0)
    if n == 0:
        return {
            "examples": 0,
            "difference": None,
            "ci95": None,
            "onlyFirstCorrect": 0,
            "onlySecondCorrect": 0,
        }
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    return {
        "examples": n,
        "difference": mean,
        "ci95": [mean - half, mean + half] if n > 1 else None,
        "onlyFirstCorrect": only_a,
        "onlySecondCorrect": only_b,
    }


def clustered_bootstrap_difference(
    a: Sequence[Sequence[bool]],
    b: Sequence[Sequence[bool]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Mean of a - b where a[i], b[i] are the outcomes of question i's samples (same sampling seeds for both),
    with a bootstrap percentile interval that resamples QUESTIONS (samples of one question are correlated).

    Each question contributes its mean over samples; the estimate is the mean over questions."""
    if len(a) != len(b):
        raise ValueError("a and b must hold the same questions")
    n = len(a)
    if n == 0:
        return {"questions": 0, "difference": None, "ci95": None}
    per_q = []
    for x, y in zip(a, b):
        if len(x) != len(y) or not x:
            raise ValueError("each question needs the same, non-zero number of samples in a and b")
        per_q.append(sum(map(int, x)) / len(x) - sum(map(int, y)) / len(y))
    mean = sum(per_q) / n
    rng = random.Random(seed)
    boots = sorted(sum(per_q[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    lo = boots[math.floor(tail * (resamples - 1))]
    hi = boots[math.ceil((1 - tail) * (resamples - 1))]
    return {
        "questions": n,
        "samplesPerQuestion": len(a[0]),
        "difference": mean,
        "ci95": [lo, hi],
        "meanA": sum(sum(map(int, x)) / len(x) for x in a) / n,
        "meanB": sum(sum(map(int, y)) / len(y) for y in b) / n,
        "resamples": resamples,
    }


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counted 1/2 (Mann-Whitney U / n+ n-).
    None when either class is empty."""
    if not positives or not negatives:
        return None
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    # average ranks over ties
    rank_sum_pos, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        avg = (i + j) / 2 + 1
        rank_sum_pos += avg * sum(1 for k in range(i, j + 1) if ranked[k][1] == 1)
        i = j + 1
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_interval(
    positives: Sequence[float], negatives: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Bootstrap 95% percentile interval of `auc` (each class resampled on its own)."""
    if not positives or not negatives:
        return None
    rng = random.Random(seed)
    vals = []
    for _ in range(resamples):
        p = [positives[rng.randrange(len(positives))] for _ in positives]
        q = [negatives[rng.randrange(len(negatives))] for _ in negatives]
        vals.append(auc(p, q))
    vals.sort()
    return vals[int(0.025 * (resamples - 1))], vals[math.ceil(0.975 * (resamples - 1))]


def roc_curve(
    positives: Sequence[float], negatives: Sequence[float], *, max_points: int = 201
) -> list[tuple[float, float]] | None:
    """ROC points (false-positive rate, true-positive rate) from (0, 0) to (1, 1), one per distinct score
    threshold, highest threshold first (tied scores move both rates at once, as `auc` counts them). Thinned
    to at most `max_points` points, always keeping both ends. None when either class is empty."""
    if not positives or not negatives:
        return None
    scored = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives], key=lambda t: -t[0])
    n_pos, n_neg = len(positives), len(negatives)
    points, tp, fp, i = [(0.0, 0.0)], 0, 0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            tp += scored[j][1]
            fp += 1 - scored[j][1]
            j += 1
        points.append((fp / n_neg, tp / n_pos))
        i = j
    if len(points) > max_points:
        step = (len(points) - 1) / (max_points - 1)
        points = [points[round(k * step)] for k in range(max_points)]
    return points
