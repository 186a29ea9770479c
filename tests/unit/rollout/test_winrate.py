"""The win rate over judged pairs and its always-valid confidence sequence."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.winrate import PreferenceCounts, win_rate


def _counts(wins: int = 0, losses: int = 0, ties: int = 0, both_bad: int = 0) -> PreferenceCounts:
    return PreferenceCounts(
        candidate="b", baseline="a", wins=wins, losses=losses, ties=ties, both_bad=both_bad
    )


def test_ties_and_both_bad_count_half() -> None:
    rate = win_rate(_counts(wins=6, losses=2, ties=1, both_bad=1))
    assert rate is not None
    assert rate.estimate == pytest.approx(0.7)
    assert rate.counts.pairs == 10
    assert win_rate(_counts()) is None


def test_the_band_is_symmetric_under_swapping_the_two_variants() -> None:
    counts = _counts(wins=70, losses=40, ties=10, both_bad=5)
    rate, flipped = win_rate(counts), win_rate(counts.flipped())
    assert rate is not None
    assert flipped is not None
    assert flipped.counts.candidate == "a"
    assert flipped.estimate == pytest.approx(1 - rate.estimate)
    assert flipped.confidence_sequence.low == pytest.approx(1 - rate.confidence_sequence.high)
    assert flipped.confidence_sequence.high == pytest.approx(1 - rate.confidence_sequence.low)


def test_the_band_narrows_with_pairs_and_stays_in_0_1() -> None:
    widths = []
    for n in (10, 100, 1000, 10_000):
        rate = win_rate(_counts(wins=int(0.6 * n), losses=n - int(0.6 * n)))
        assert rate is not None
        cs = rate.confidence_sequence
        assert 0.0 <= cs.low < rate.estimate < cs.high <= 1.0
        widths.append(cs.high - cs.low)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.05
    # Every pair one way: the band still has width (no certainty from a handful).
    lopsided = win_rate(_counts(wins=5))
    assert lopsided is not None
    assert lopsided.confidence_sequence.high == 1.0
    assert lopsided.confidence_sequence.low < 0.6


@pytest.mark.parametrize(
    ("probs", "seed"),
    [((0.5, 0.5, 0.0, 0.0), 1), ((0.1, 0.85, 0.05, 0.0), 2), ((0.6, 0.2, 0.1, 0.1), 3)],
)
def test_coverage_holds_under_continuous_looking(
    probs: tuple[float, float, float, float], seed: int
) -> None:
    """Seeded simulation: looking after every 10 pairs up to 1000, the band misses the true
    win rate at any look in at most alpha of the runs (here 5%, with Monte Carlo slack)."""
    truth = probs[0] + 0.5 * (probs[2] + probs[3])
    runs, misses = 150, 0
    for run in range(runs):
        rng = random.Random(seed * 10_000 + run)
        tally = [0, 0, 0, 0]
        for i in range(1, 1001):
            x, edge = rng.random(), 0.0
            for k, p in enumerate(probs):
                edge += p
                if x < edge or k == 3:
                    tally[k] += 1
                    break
            if i % 10 == 0:
                rate = win_rate(_counts(*tally))
                assert rate is not None
                if not rate.confidence_sequence.contains(truth):
                    misses += 1
                    break
    # 150 runs: at a true 5% miss rate, 14 or more misses happens less than 2% of the time.
    assert misses <= 13, misses


def test_a_fixed_sample_interval_would_not_survive_the_same_looking() -> None:
    """The check above can fail: a 95% Wald interval, looked at as often, misses far more."""
    runs, misses = 150, 0
    for run in range(runs):
        rng = random.Random(run)
        wins = 0
        for i in range(1, 1001):
            wins += rng.random() < 0.5
            if i % 10 == 0:
                p = wins / i
                half = 1.96 * (max(p * (1 - p), 1e-9) / i) ** 0.5
                if not p - half <= 0.5 <= p + half:
                    misses += 1
                    break
    assert misses > 13


@given(
    wins=st.integers(0, 5000),
    losses=st.integers(0, 5000),
    ties=st.integers(0, 500),
    both_bad=st.integers(0, 500),
)
def test_the_band_holds_its_estimate_and_mirrors_when_flipped(
    wins: int, losses: int, ties: int, both_bad: int
) -> None:
    counts = _counts(wins, losses, ties, both_bad)
    rate = win_rate(counts)
    if counts.pairs == 0:
        assert rate is None
        return
    flipped = win_rate(counts.flipped())
    assert rate is not None
    assert flipped is not None
    cs = rate.confidence_sequence
    assert 0.0 <= cs.low <= rate.estimate <= cs.high <= 1.0
    assert flipped.confidence_sequence.low == pytest.approx(1 - cs.high, abs=1e-9)
    # One more win never lowers the lower bound.
    more = win_rate(_counts(wins + 1, losses, ties, both_bad))
    assert more is not None
    assert more.confidence_sequence.low >= cs.low - 1e-9
