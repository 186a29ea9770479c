"""Sample ratio mismatch: are assignments split the way the weights say they should be?

A mismatch means the arms differ by more than the variant (a bug in bucketing, a variant
that crashes before it logs, bots hitting one arm), so no comparison of them can be trusted.
Pearson's chi-square goodness of fit, per phase because each phase has its own weights;
phases are independent, so their statistics and degrees of freedom add.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from rollout.distributions import chi2_sf


class SrmResult(BaseModel):
    """Chi-square goodness of fit of assignments to weights; p_value 0 on any stray unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statistic: float = Field(ge=0.0)
    df: int = Field(ge=0)
    p_value: float = Field(ge=0.0, le=1.0)
    stray_units: int = Field(
        default=0, ge=0, description="assignments to variants whose weight is zero"
    )


_NO_EVIDENCE = SrmResult(statistic=0.0, df=0, p_value=1.0)


def srm_test(counts: Mapping[str, int], weights: Mapping[str, float]) -> SrmResult:
    """Chi-square test of assignment counts against the configured weights (any scale)."""
    unknown = set(counts) - set(weights)
    if unknown:
        raise ValueError(f"counts for variants without a weight: {sorted(unknown)}")
    if any(w < 0.0 for w in weights.values()) or any(c < 0 for c in counts.values()):
        raise ValueError("weights and counts must be >= 0")
    live = {name: w for name, w in weights.items() if w > 0.0}
    # A unit in an arm that should be empty is a mismatch beyond doubt; no statistic needed.
    stray = sum(counts.get(name, 0) for name, w in weights.items() if w == 0.0)
    total = sum(counts.get(name, 0) for name in live)
    statistic = 0.0
    if total > 0:
        total_weight = sum(live.values())
        for name, weight in live.items():
            expected = total * weight / total_weight
            statistic += (counts.get(name, 0) - expected) ** 2 / expected
    df = len(live) - 1 if total > 0 else 0
    if stray > 0:
        return SrmResult(statistic=statistic, df=df, p_value=0.0, stray_units=stray)
    if df <= 0:
        return _NO_EVIDENCE
    return SrmResult(statistic=statistic, df=df, p_value=chi2_sf(statistic, df))


def combine_srm(results: Iterable[SrmResult]) -> SrmResult:
    """Sum independent chi-square tests (one per phase) into one."""
    statistic = 0.0
    df = 0
    stray = 0
    for result in results:
        statistic += result.statistic
        df += result.df
        stray += result.stray_units
    if stray > 0:
        return SrmResult(statistic=statistic, df=df, p_value=0.0, stray_units=stray)
    if df == 0:
        return _NO_EVIDENCE
    return SrmResult(statistic=statistic, df=df, p_value=chi2_sf(statistic, df))
