"""Pure-Python special functions against scipy."""

from __future__ import annotations

import pytest
from scipy import special, stats

from rollout.distributions import (
    chi2_sf,
    normal_quantile,
    regularized_beta,
    regularized_gamma_q,
    t_cdf,
    t_quantile,
    two_sided_z,
)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 10, 30, 100, 1000])
@pytest.mark.parametrize("x", [0.0, 1e-6, 0.1, 0.5, 1.0, 2.0, 3.84, 6.63, 10.0, 50.0, 200.0])
def test_chi2_sf_matches_scipy(x: float, df: int) -> None:
    expected = float(stats.chi2.sf(x, df))
    assert chi2_sf(x, df) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.5, 10.0, 150.0])
@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.0, 11.0, 140.0, 170.0])
def test_regularized_gamma_q_matches_scipy(a: float, x: float) -> None:
    assert regularized_gamma_q(a, x) == pytest.approx(
        float(special.gammaincc(a, x)), rel=1e-9, abs=1e-300
    )


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.5), (1.0, 3.0), (5.0, 0.5), (20.0, 30.0)])
@pytest.mark.parametrize("x", [0.0, 0.01, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_regularized_beta_matches_scipy(a: float, b: float, x: float) -> None:
    assert regularized_beta(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), abs=1e-12)


@pytest.mark.parametrize("df", [1.0, 2.0, 4.5, 9.0, 29.0, 200.0])
@pytest.mark.parametrize("p", [0.005, 0.025, 0.1, 0.5, 0.9, 0.975, 0.995])
def test_t_quantile_and_cdf_match_scipy(p: float, df: float) -> None:
    q = t_quantile(p, df)
    assert q == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-9, abs=1e-12)
    assert t_cdf(q, df) == pytest.approx(p, abs=1e-12)


def test_normal_quantiles() -> None:
    assert two_sided_z(0.95) == pytest.approx(1.959963984540054)
    assert normal_quantile(0.995) == pytest.approx(float(stats.norm.ppf(0.995)))


@pytest.mark.parametrize(
    "call",
    [
        lambda: chi2_sf(1.0, 0),
        lambda: regularized_gamma_q(0.0, 1.0),
        lambda: regularized_beta(1.0, 1.0, 1.5),
        lambda: t_quantile(1.0, 3.0),
        lambda: two_sided_z(1.0),
    ],
)
def test_out_of_domain_raises(call: object) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        call()  # type: ignore[operator]
