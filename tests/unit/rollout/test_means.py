"""The mSPRT on evaluator scores: error rate under peeking, coverage, power."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.intervals import welch_interval
from rollout.means import Moments, mean_evidence, mean_msprt, moments

ALPHA = 0.05
TAU = 0.25
GRADES = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


def _judge(rng: np.random.Generator, probs: list[float], size: int) -> list[float]:
    """Judge grades 1-5 drawn with these probabilities (discrete, skewed, like real ones)."""
    return [float(g) for g in rng.choice(GRADES, size=size, p=probs)]


def _peek(
    rng: np.random.Generator,
    probs_canary: list[float],
    probs_control: list[float],
    batch_canary: int,
    batch_control: int,
    looks: int,
) -> tuple[float | None, bool]:
    """Peek after every batch: (difference at the first p <= alpha, or None; CS always covered)."""
    true_diff = float(GRADES @ np.array(probs_canary) - GRADES @ np.array(probs_control))
    canary, control = Moments(), Moments()
    p_value, covered, found = 1.0, True, None
    for _ in range(looks):
        for v in _judge(rng, probs_canary, batch_canary):
            canary = canary.add(v)
        for v in _judge(rng, probs_control, batch_control):
            control = control.add(v)
        if min(canary.count, control.count) < 10:
            continue
        result = mean_msprt(canary, control, ALPHA, TAU, p_value)
        assert result is not None
        p_value = result.p_value
        covered = covered and result.confidence_sequence.contains(true_diff)
        if found is None and p_value <= ALPHA:
            found = result.difference
    return found, covered


SKEWED = [0.05, 0.1, 0.2, 0.35, 0.3]
BETTER = [0.03, 0.07, 0.15, 0.35, 0.4]


def test_evidence_matches_welch_and_needs_spread() -> None:
    a, b = moments([4.0, 5.0, 3.0, 5.0]), moments([3.0, 2.0, 4.0, 3.0, 3.0])
    evidence = mean_evidence(a, b)
    assert evidence is not None
    welch = welch_interval(a.count, a.total, a.total_sq, b.count, b.total, b.total_sq)
    assert evidence.difference == pytest.approx(welch.estimate)
    assert evidence.difference == pytest.approx(4.25 - 3.0)
    assert evidence.variance == pytest.approx((0.9166666 / 4) + (0.5 / 5), rel=1e-5)
    assert mean_evidence(moments([5.0]), b) is None
    # Every value the same in both arms: no spread, no evidence (not certainty).
    assert mean_evidence(moments([5.0, 5.0]), moments([5.0, 5.0, 5.0])) is None


@pytest.mark.parametrize(("batch_canary", "batch_control"), [(20, 20), (5, 45)])
def test_a_a_false_positive_rate_under_continuous_peeking(
    batch_canary: int, batch_control: int
) -> None:
    rng = np.random.default_rng(20261202)
    runs, looks = 300, 40
    outcomes = [_peek(rng, SKEWED, SKEWED, batch_canary, batch_control, looks) for _ in range(runs)]
    assert sum(found is not None for found, _ in outcomes) / runs <= ALPHA


def test_confidence_sequence_covers_at_every_look() -> None:
    rng = np.random.default_rng(5)
    runs = 200
    covered = sum(_peek(rng, BETTER, SKEWED, 20, 20, 40)[1] for _ in range(runs))
    assert covered / runs >= 1 - ALPHA


def test_power_a_better_judge_score_is_found_with_the_right_sign() -> None:
    rng = np.random.default_rng(9)
    runs = 100
    found = [_peek(rng, BETTER, SKEWED, 30, 30, 40)[0] for _ in range(runs)]
    detected = [d for d in found if d is not None]
    assert len(detected) / runs >= 0.8
    assert all(d > 0 for d in detected)
