"""A weight change together with a time trend: naive pooling reverses the sign, strata do not."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.experiment import naive_evidence, stratified_evidence
from rollout.model import Phase, VariantCounts
from rollout.sequential import msprt

EFFECT = 0.02  # the canary is truly better by 2 points in every phase

# (canary feedback, control feedback, control's share): the canary ramps from 5% to 50%
# while the share drifts down for everyone (novelty wearing off, a harder mix of prompts).
PLAN = [(500, 9500, 0.80), (5000, 5000, 0.50)]


def _phase(start: float, canary: int, control: int, share: float, kc: int, kk: int) -> Phase:
    total = canary + control
    return Phase(
        started_at=start,
        weights={"control": control / total, "canary": canary / total},
        counts={
            "canary": VariantCounts(exposures=canary, positive=kc, negative=canary - kc),
            "control": VariantCounts(exposures=control, positive=kk, negative=control - kk),
        },
    )


def _expected_phases() -> list[Phase]:
    return [
        _phase(3600.0 * i, c, k, s, round(c * (s + EFFECT)), round(k * s))
        for i, (c, k, s) in enumerate(PLAN)
    ]


def test_naive_pooling_reverses_the_sign_and_strata_recover_the_effect() -> None:
    phases = _expected_phases()
    naive = naive_evidence(phases, "canary", "control")
    strata = stratified_evidence(phases, "canary", "control")
    assert naive is not None
    assert strata is not None
    # Pooled, the canary's feedback comes mostly from the later, lower-share phase:
    # (410 + 2600) / 5500 - (7600 + 2500) / 14500 = -0.149, "much worse".
    assert naive.difference == pytest.approx(3010 / 5500 - 10100 / 14500)
    assert naive.difference < -0.1
    assert msprt(naive).p_value < 1e-6
    assert strata.difference == pytest.approx(EFFECT)
    assert msprt(strata).confidence_sequence.contains(EFFECT)


def test_seeded_simulation_naive_is_biased_stratified_is_not() -> None:
    rng = np.random.default_rng(3)
    naive_estimates, strata_estimates = [], []
    for _ in range(300):
        phases = []
        for i, (c, k, s) in enumerate(PLAN):
            kc = int(rng.binomial(c, s + EFFECT))
            kk = int(rng.binomial(k, s))
            phases.append(_phase(3600.0 * i, c, k, s, kc, kk))
        naive = naive_evidence(phases, "canary", "control")
        strata = stratified_evidence(phases, "canary", "control")
        assert naive is not None
        assert strata is not None
        naive_estimates.append(naive.difference)
        strata_estimates.append(strata.difference)
    # Standard error of the mean of 300 estimates is about 0.0006: a bias of 0.003 is real.
    assert abs(float(np.mean(strata_estimates)) - EFFECT) < 0.003
    assert float(np.mean(naive_estimates)) < -0.1
