"""The mSPRT: its formula, its error rate under continuous peeking, and its power."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.sequential import (
    Evidence,
    combine,
    confidence_sequence,
    log_mixture_likelihood_ratio,
    msprt,
    share_evidence,
)

ALPHA = 0.05
TAU = 0.05


def _first_rejection(
    rng: np.random.Generator,
    p_canary: float,
    p_control: float,
    batch_canary: int,
    batch_control: int,
    looks: int,
    min_outcomes: int = 10,
) -> float | None:
    """Peek after every batch; the difference at the first look with p <= alpha, else None."""
    k_canary = rng.binomial(batch_canary, p_canary, size=looks).cumsum()
    k_control = rng.binomial(batch_control, p_control, size=looks).cumsum()
    p_value = 1.0
    for look in range(looks):
        n_canary, n_control = batch_canary * (look + 1), batch_control * (look + 1)
        kc, kk = int(k_canary[look]), int(k_control[look])
        # As the decision does: no verdict before each arm has both outcomes a few times.
        if min(kc, n_canary - kc, kk, n_control - kk) < min_outcomes:
            continue
        evidence = share_evidence(kc, n_canary, kk, n_control)
        assert evidence is not None
        result = msprt(evidence, ALPHA, TAU, p_value)
        p_value = result.p_value
        if p_value <= ALPHA:
            return result.difference
    return None


def test_matches_johari_balanced_form() -> None:
    # Johari et al. (2022), eq. for two streams of n each with variance sigma^2:
    # Lambda = sqrt(2s2 / (2s2 + n t2)) exp(n^2 t2 d^2 / (4 s2 (2 s2 + n t2))).
    n, s2, t2, d = 400, 0.24, TAU**2, 0.03
    expected = 0.5 * math.log(2 * s2 / (2 * s2 + n * t2)) + n * n * t2 * d * d / (
        4 * s2 * (2 * s2 + n * t2)
    )
    evidence = Evidence(difference=d, variance=2 * s2 / n, null_variance=2 * s2 / n)
    assert log_mixture_likelihood_ratio(evidence, TAU) == pytest.approx(expected)


def test_confidence_sequence_is_the_inverted_test() -> None:
    evidence = Evidence(difference=0.04, variance=0.0004, null_variance=0.0004)
    cs = confidence_sequence(evidence, ALPHA, TAU)
    # At the edge of the sequence, the test of that value sits exactly at 1 / alpha.
    for edge in (cs.low, cs.high):
        shifted = Evidence(difference=0.04 - edge, variance=0.0004, null_variance=0.0004)
        assert log_mixture_likelihood_ratio(shifted, TAU) == pytest.approx(math.log(1 / ALPHA))
    assert cs.low < 0.04 < cs.high


def test_p_value_is_a_running_minimum() -> None:
    weak = share_evidence(50, 100, 50, 100)
    assert weak is not None
    assert msprt(weak).p_value == 1.0
    assert msprt(weak, previous_p_value=0.2).p_value == 0.2
    strong = share_evidence(900, 1000, 100, 1000)
    assert strong is not None
    assert msprt(strong).p_value == pytest.approx(0.0, abs=1e-100)


def test_empty_arm_gives_no_evidence_and_one_outcome_no_certainty() -> None:
    assert share_evidence(0, 0, 5, 10) is None
    # All successes in both arms: the shrunk variance stays positive, so no rejection.
    same = share_evidence(30, 30, 30, 30)
    assert same is not None
    assert same.variance > 0
    assert msprt(same).p_value == 1.0


def test_combine_of_one_phase_is_that_phase() -> None:
    one = share_evidence(120, 200, 100, 200)
    assert one is not None
    combined = combine([one, None])
    assert combined is not None
    assert combined.difference == pytest.approx(one.difference)
    assert combined.null_variance == pytest.approx(one.null_variance)
    assert combined.variance == pytest.approx(one.variance)
    assert combine([None]) is None


@pytest.mark.parametrize(
    ("share", "batch_canary", "batch_control"),
    [
        (0.5, 20, 20),  # balanced
        (0.7, 5, 45),  # canary at 10%, a thumbs-up share
        (0.08, 10, 90),  # canary at 10%, a rare outcome
    ],
)
def test_a_a_false_positive_rate_under_continuous_peeking(
    share: float, batch_canary: int, batch_control: int
) -> None:
    rng = np.random.default_rng(20240608)
    runs, looks = 400, 60
    rejections = sum(
        _first_rejection(rng, share, share, batch_canary, batch_control, looks) is not None
        for _ in range(runs)
    )
    # Ville's inequality bounds the rate by alpha; the mixture is conservative in practice.
    assert rejections / runs <= ALPHA


def test_a_a_with_phases_and_a_time_trend_stays_within_alpha() -> None:
    """Weights ramp 5% -> 25% -> 50% while the metric drifts; the combined test keeps alpha."""
    rng = np.random.default_rng(7)
    runs, looks_per_phase = 300, 20
    plan = [(5, 95, 0.75), (25, 75, 0.6), (50, 50, 0.45)]  # canary, control per batch; share
    rejections = 0
    for _ in range(runs):
        finished: list[Evidence | None] = []
        p_value = 1.0
        rejected = False
        for batch_canary, batch_control, share in plan:
            kc = kk = nc = nk = 0
            for _ in range(looks_per_phase):
                kc += int(rng.binomial(batch_canary, share))
                kk += int(rng.binomial(batch_control, share))
                nc += batch_canary
                nk += batch_control
                evidence = combine([*finished, share_evidence(kc, nc, kk, nk)])
                assert evidence is not None
                p_value = msprt(evidence, ALPHA, TAU, p_value).p_value
                rejected = rejected or p_value <= ALPHA
            finished.append(share_evidence(kc, nc, kk, nk))
        rejections += rejected
    assert rejections / runs <= ALPHA


def test_power_a_real_difference_is_found_with_the_right_sign() -> None:
    rng = np.random.default_rng(11)
    runs = 100
    found = [_first_rejection(rng, 0.60, 0.50, 50, 50, 60) for _ in range(runs)]
    detected = [d for d in found if d is not None]
    assert len(detected) / runs >= 0.9
    assert all(d > 0 for d in detected)


def test_power_a_worse_canary_at_low_traffic_is_found() -> None:
    rng = np.random.default_rng(12)
    runs = 100
    found = [_first_rejection(rng, 0.45, 0.60, 10, 90, 80) for _ in range(runs)]
    detected = [d for d in found if d is not None]
    assert len(detected) / runs >= 0.8
    assert all(d < 0 for d in detected)
