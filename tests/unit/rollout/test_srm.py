"""Sample ratio mismatch against scipy's chi-square goodness of fit."""

from __future__ import annotations

import pytest
from scipy import stats

from rollout.srm import combine_srm, srm_test


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ({"a": 5030, "b": 4970}, {"a": 50.0, "b": 50.0}),
        ({"a": 5200, "b": 4800}, {"a": 0.5, "b": 0.5}),
        ({"a": 9400, "b": 600}, {"a": 95.0, "b": 5.0}),
        ({"a": 100, "b": 230, "c": 70}, {"a": 1.0, "b": 2.0, "c": 1.0}),
        ({"a": 1, "b": 0}, {"a": 1.0, "b": 1.0}),
    ],
)
def test_matches_scipy_chisquare(counts: dict[str, int], weights: dict[str, float]) -> None:
    total = sum(counts.values())
    names = sorted(weights)
    expected = [total * weights[n] / sum(weights.values()) for n in names]
    ref = stats.chisquare([counts[n] for n in names], expected)
    result = srm_test(counts, weights)
    assert result.statistic == pytest.approx(float(ref.statistic))
    assert result.p_value == pytest.approx(float(ref.pvalue), rel=1e-9)
    assert result.df == len(names) - 1


def test_flags_a_real_mismatch_and_passes_a_fair_split() -> None:
    assert srm_test({"a": 5300, "b": 4700}, {"a": 1, "b": 1}).p_value < 1e-6
    assert srm_test({"a": 5030, "b": 4970}, {"a": 1, "b": 1}).p_value > 0.5


def test_units_in_a_zero_weight_arm_are_a_mismatch() -> None:
    result = srm_test({"a": 100, "b": 3}, {"a": 1.0, "b": 0.0})
    assert result.p_value == 0.0
    assert result.stray_units == 3
    assert srm_test({"a": 100}, {"a": 1.0, "b": 0.0}).p_value == 1.0


def test_no_assignments_or_one_arm_is_no_evidence() -> None:
    assert srm_test({}, {"a": 1.0, "b": 1.0}).p_value == 1.0
    assert srm_test({"a": 10}, {"a": 1.0}).df == 0


def test_counts_for_unknown_variants_raise() -> None:
    with pytest.raises(ValueError, match="without a weight"):
        srm_test({"z": 3}, {"a": 1.0})


def test_phases_add_statistics_and_degrees_of_freedom() -> None:
    one = srm_test({"a": 9450, "b": 550}, {"a": 95, "b": 5})
    two = srm_test({"a": 4890, "b": 5110}, {"a": 50, "b": 50})
    both = combine_srm([one, two])
    assert both.df == 2
    assert both.statistic == pytest.approx(one.statistic + two.statistic)
    assert both.p_value == pytest.approx(float(stats.chi2.sf(both.statistic, 2)))
    assert combine_srm([]).p_value == 1.0
