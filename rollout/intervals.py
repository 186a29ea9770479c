"""Fixed-sample confidence intervals: Wilson for a share, Newcombe for a difference, t for means.

These are for showing people where a number probably lies at one look. They are not for
deciding: repeated looks at a fixed-sample interval inflate its error rate, which is what
rollout.sequential is for.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from rollout.distributions import t_quantile, two_sided_z


class Interval(BaseModel):
    """A point estimate and the bounds of an interval around it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    estimate: float
    low: float
    high: float
    confidence: float = Field(gt=0.0, lt=1.0)

    def contains(self, value: float) -> bool:
        """Whether value lies within the closed interval."""
        return self.low <= value <= self.high


def _check_counts(successes: int, trials: int) -> None:
    if trials <= 0:
        raise ValueError(f"need at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")


def wilson(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion (Wilson 1927; Newcombe 1998, method 3)."""
    _check_counts(successes, trials)
    z = two_sided_z(confidence)
    n = float(trials)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    # The score bounds at 0 and n are exactly 0 and 1; pin them so rounding cannot leak.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(estimate=p, low=low, high=high, confidence=confidence)


def newcombe(
    successes_a: int,
    trials_a: int,
    successes_b: int,
    trials_b: int,
    confidence: float = 0.95,
) -> Interval:
    """Newcombe's hybrid score interval for p_a - p_b (Newcombe 1998, method 10)."""
    a = wilson(successes_a, trials_a, confidence)
    b = wilson(successes_b, trials_b, confidence)
    d = a.estimate - b.estimate
    low = d - math.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
    high = d + math.sqrt((a.high - a.estimate) ** 2 + (b.estimate - b.low) ** 2)
    return Interval(estimate=d, low=max(-1.0, low), high=min(1.0, high), confidence=confidence)


def sample_variance(count: int, total: float, total_sq: float) -> float:
    """Unbiased sample variance from the count, sum and sum of squares of the values."""
    if count < 2:
        raise ValueError(f"need at least two values, got {count}")
    mean = total / count
    # Running sums can make this a hair negative when all values are equal.
    return max(0.0, (total_sq - count * mean * mean) / (count - 1))


def mean_interval(count: int, total: float, total_sq: float, confidence: float = 0.95) -> Interval:
    """Student t interval for a mean, from the count, sum and sum of squares of the values."""
    var = sample_variance(count, total, total_sq)
    mean = total / count
    half = t_quantile(0.5 + confidence / 2.0, count - 1) * math.sqrt(var / count)
    return Interval(estimate=mean, low=mean - half, high=mean + half, confidence=confidence)


def welch_interval(
    count_a: int,
    total_a: float,
    total_sq_a: float,
    count_b: int,
    total_b: float,
    total_sq_b: float,
    confidence: float = 0.95,
) -> Interval:
    """Welch's t interval for mean_a - mean_b, unequal variances, Satterthwaite's df."""
    va = sample_variance(count_a, total_a, total_sq_a) / count_a
    vb = sample_variance(count_b, total_b, total_sq_b) / count_b
    d = total_a / count_a - total_b / count_b
    se2 = va + vb
    if se2 == 0.0:
        return Interval(estimate=d, low=d, high=d, confidence=confidence)
    df = se2 * se2 / (va * va / (count_a - 1) + vb * vb / (count_b - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(se2)
    return Interval(estimate=d, low=d - half, high=d + half, confidence=confidence)
