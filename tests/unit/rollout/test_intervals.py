"""Wilson, Newcombe, t and Welch intervals against published values and references."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from rollout.intervals import Interval, mean_interval, newcombe, welch_interval, wilson

# Newcombe (1998a), "Two-sided confidence intervals for the single proportion: comparison of
# seven methods", Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score).
WILSON_1998 = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]

# Newcombe (1998b), "Interval estimation for the difference between independent proportions:
# comparison of eleven methods", Statistics in Medicine 17:873-890, Table II, method 10.
NEWCOMBE_1998 = [
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (0, 10, 0, 10, -0.2775, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000),
    (10, 10, 0, 10, 0.6075, 1.0000),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), WILSON_1998)
def test_wilson_matches_newcombe_table(k: int, n: int, low: float, high: float) -> None:
    ci = wilson(k, n)
    assert (round(ci.low, 4), round(ci.high, 4)) == (low, high)
    assert ci.estimate == k / n


@pytest.mark.parametrize(("a", "m", "b", "n", "low", "high"), NEWCOMBE_1998)
def test_newcombe_matches_published_table(
    a: int, m: int, b: int, n: int, low: float, high: float
) -> None:
    ci = newcombe(a, m, b, n)
    assert (round(ci.low, 4), round(ci.high, 4)) == (low, high)
    assert ci.estimate == pytest.approx(a / m - b / n)


def _score_bound(k: int, n: int, z: float, upper: bool) -> float:
    """Reference: the p where the score statistic |p_hat - p| / sqrt(p(1-p)/n) equals z."""
    p_hat = k / n
    lo, hi = (p_hat, 1.0) if upper else (0.0, p_hat)
    if (upper and k == n) or (not upper and k == 0):
        return p_hat
    for _ in range(200):
        mid = (lo + hi) / 2
        inside = abs(p_hat - mid) <= z * math.sqrt(mid * (1 - mid) / n)
        if inside == upper:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (3, 7), (50, 100), (999, 1000), (7, 12345)])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_inverts_the_score_test(k: int, n: int, confidence: float) -> None:
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    ci = wilson(k, n, confidence)
    assert ci.low == pytest.approx(_score_bound(k, n, z, upper=False), abs=1e-9)
    assert ci.high == pytest.approx(_score_bound(k, n, z, upper=True), abs=1e-9)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0


def test_wilson_rejects_impossible_counts() -> None:
    for k, n in ((0, 0), (3, 2), (-1, 5)):
        with pytest.raises(ValueError, match=r"trial|successes"):
            wilson(k, n)


def test_mean_interval_matches_scipy_t() -> None:
    values = [4.0, 5.0, 3.0, 5.0, 4.0, 2.0, 5.0, 4.0]
    ci = mean_interval(len(values), sum(values), sum(v * v for v in values), 0.95)
    low, high = stats.t.interval(
        0.95, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values)
    )
    assert ci.low == pytest.approx(low)
    assert ci.high == pytest.approx(high)


def test_welch_interval_matches_scipy() -> None:
    a = [4.0, 5.0, 3.0, 5.0, 4.0, 2.0, 5.0, 4.0, 5.0]
    b = [3.0, 2.0, 4.0, 1.0, 3.0, 3.0]
    ci = welch_interval(
        len(a), sum(a), sum(v * v for v in a), len(b), sum(b), sum(v * v for v in b)
    )
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert ci.low == pytest.approx(ref.low)
    assert ci.high == pytest.approx(ref.high)


def test_welch_with_no_spread_is_a_point() -> None:
    ci = welch_interval(3, 12.0, 48.0, 2, 6.0, 18.0)
    assert ci == Interval(estimate=1.0, low=1.0, high=1.0, confidence=0.95)
