"""Always-valid inference on a difference of means (evaluator scores), via the mSPRT.

rollout.sequential's normal-mixture SPRT needs only an estimate of canary minus control and
its variance; for means those come from each arm's count, sum and sum of squares, the running
totals the counters keep. Johari et al. (2022) give the mSPRT for means in exactly this form
(Gaussian increments, plug-in variance), valid as the arms grow by the central limit theorem.
`tau` is the scale of differences worth finding, in score units (for 1-5 judge scores ~0.25).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rollout.intervals import sample_variance
from rollout.sequential import Evidence, SequentialResult, msprt


class Moments(BaseModel):
    """Count, sum and sum of squares of one arm's values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(0, ge=0)
    total: float = 0.0
    total_sq: float = Field(0.0, ge=0.0)

    def add(self, value: float) -> Moments:
        """These moments with one more value."""
        return Moments(
            count=self.count + 1, total=self.total + value, total_sq=self.total_sq + value * value
        )

    @property
    def mean(self) -> float:
        """The mean, 0.0 when empty."""
        return self.total / self.count if self.count else 0.0


def moments(values: list[float]) -> Moments:
    """The moments of a list of values."""
    return Moments(count=len(values), total=sum(values), total_sq=sum(v * v for v in values))


def mean_evidence(canary: Moments, control: Moments) -> Evidence | None:
    """Difference of two means with its unpooled and pooled variances.

    None until each arm has two values, or while every value seen is the same: a zero
    variance would make any difference look certain, so there is no evidence to weigh yet.
    """
    if canary.count < 2 or control.count < 2:
        return None
    var_c = sample_variance(canary.count, canary.total, canary.total_sq)
    var_k = sample_variance(control.count, control.total, control.total_sq)
    n = canary.count + control.count
    # Pooled around the pooled mean: the variance if the two arms did not differ (the score
    # test's null variance, as share_evidence uses the pooled share).
    pooled = sample_variance(n, canary.total + control.total, canary.total_sq + control.total_sq)
    variance = var_c / canary.count + var_k / control.count
    null_variance = pooled * (1.0 / canary.count + 1.0 / control.count)
    if variance <= 0.0 or null_variance <= 0.0:
        return None
    return Evidence(
        difference=canary.mean - control.mean, variance=variance, null_variance=null_variance
    )


def mean_msprt(
    canary: Moments,
    control: Moments,
    alpha: float = 0.05,
    tau: float = 0.25,
    previous_p_value: float = 1.0,
) -> SequentialResult | None:
    """The mSPRT for canary mean minus control mean at this look; None without evidence."""
    evidence = mean_evidence(canary, control)
    if evidence is None:
        return None
    return msprt(evidence, alpha, tau, previous_p_value)
