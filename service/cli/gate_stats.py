"""The statistics of `rewardserve gate`, in points (0-100): an accuracy with its Wilson
interval, an AUC with DeLong's, and the interval of the candidate's difference from the live
model. Both score the same records, so the difference is paired: its interval is far
narrower than the two intervals side by side suggest, and it alone says which is better."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_json(self) -> dict:
        """Rounded; an interval with no bound (a single record) as null."""
        return {key: round(value, 4) if np.isfinite(value) else None for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Comparison:
    """One dimension on one bucket: each model's figure and the candidate's difference."""

    n: int
    live: Estimate
    candidate: Estimate
    difference: Estimate

    @property
    def better(self) -> str | None:
        """'candidate' or 'live' when the difference's interval excludes 0, else None."""
        if self.difference.low > 0:
            return "candidate"
        return "live" if self.difference.high < 0 else None

    def regresses(self, max_regression: float) -> bool:
        """Worse beyond the interval, and by more than `max_regression` points."""
        return self.better == "live" and -self.difference.value > max_regression


def wilson(successes: int, n: int) -> Estimate:
    """A share with its 95% Wilson score interval (sound near 0 and 1, unlike the normal one)."""
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return Estimate(100 * p, 100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def mean_interval(mean: float, variance: float) -> Estimate:
    """A mean with its normal 95% interval, from the variance of the mean."""
    half = Z95 * np.sqrt(variance)
    return Estimate(100 * float(mean), 100 * float(mean - half), 100 * float(mean + half))


def compare_hits(live: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Per-record hits (1 right, 0 wrong) of both models on the same records."""
    n = len(live)
    delta = candidate.astype(np.float64) - live
    variance = delta.var(ddof=1) / n if n > 1 else np.inf
    return Comparison(n, wilson(int(live.sum()), n), wilson(int(candidate.sum()), n),
                      mean_interval(delta.mean(), variance))


def placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placements: per positive, the share of negatives it outscores (ties half);
    per negative, the share of positives that outscore it. Either's mean is the AUC."""
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return wins.mean(axis=1), wins.mean(axis=0)


def compare_auc(labels: np.ndarray, live: np.ndarray, candidate: np.ndarray) -> Comparison | None:
    """Both models' AUC of the labels, with DeLong's intervals; None without both classes."""
    labels = labels.astype(bool)
    m, k = int(labels.sum()), int((~labels).sum())
    if m == 0 or k == 0:
        return None
    (live_pos, live_neg), (cand_pos, cand_neg) = placements(labels, live), placements(labels, candidate)

    def variance(pos: np.ndarray, neg: np.ndarray) -> float:
        return (pos.var(ddof=1) / m if m > 1 else 0.0) + (neg.var(ddof=1) / k if k > 1 else 0.0)

    def clipped(estimate: Estimate) -> Estimate:
        return Estimate(estimate.value, max(0.0, estimate.low), min(100.0, estimate.high))

    return Comparison(m + k, clipped(mean_interval(live_pos.mean(), variance(live_pos, live_neg))),
                      clipped(mean_interval(cand_pos.mean(), variance(cand_pos, cand_neg))),
                      mean_interval(cand_pos.mean() - live_pos.mean(),
                                    variance(cand_pos - live_pos, cand_neg - live_neg)))


def verdict(comparisons: list[Comparison], max_regression: float) -> str:
    """'regresses' when any row is worse past the allowed drop; else 'dominates' (some row
    better, none worse), 'trades off' (some better, some worse within the allowed drop),
    'worse within tolerance' or 'equivalent' (no row differs beyond its interval)."""
    sides = {c.better for c in comparisons}
    if any(c.regresses(max_regression) for c in comparisons):
        return "regresses"
    if "candidate" in sides:
        return "trades off" if "live" in sides else "dominates"
    return "worse within tolerance" if "live" in sides else "equivalent"
