"""Always-valid inference on a difference of shares: the normal-mixture SPRT (mSPRT).

Johari, Koomen, Pekelis and Walsh, "Peeking at A/B Tests" (KDD 2017) and "Always Valid
Inference: Continuous Monitoring of A/B Tests" (Operations Research 70(3), 2022). With theta
the canary-minus-control difference, theta_hat its estimate and V = Var(theta_hat), the
mixture likelihood ratio against H0: theta = theta0 under a N(theta0, tau^2) mixing law is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (theta_hat - theta0)^2 / (2 V (V + tau^2)))

a non-negative martingale under H0, so by Ville's inequality P(sup Lambda >= 1/alpha) <= alpha:
p = min over looks of 1/Lambda may be read after every batch without inflating the error.
Inverting the test over theta0 (with the unpooled V) gives the confidence sequence, a
band that covers the true difference at every look at once with probability 1 - alpha.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from rollout.intervals import Interval


class Evidence(BaseModel):
    """An estimate of canary minus control with its variance, and its variance if no difference.

    The test of "no difference" uses null_variance (from the pooled share, as the score test
    does): under that null it is the better estimate, and with a small canary arm the unpooled
    one is too often too small. Intervals away from zero use the unpooled variance.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    difference: float
    variance: float = Field(gt=0.0)
    null_variance: float = Field(gt=0.0)


class SequentialResult(BaseModel):
    """The mSPRT at one look: likelihood ratio, always-valid p-value, confidence sequence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    difference: float
    variance: float
    null_variance: float
    log_likelihood_ratio: float
    p_value: float = Field(ge=0.0, le=1.0)
    confidence_sequence: Interval
    alpha: float
    tau: float


def _shrunk_share(successes: int, trials: int) -> float:
    # Half a success and half a failure keep a plug-in variance off zero while an arm has
    # seen only one outcome; otherwise V = 0 would make any difference look certain.
    return (successes + 0.5) / (trials + 1.0)


def share_evidence(
    successes_canary: int, trials_canary: int, successes_control: int, trials_control: int
) -> Evidence | None:
    """Difference of two shares with its unpooled and pooled variances; None if an arm is empty."""
    if trials_canary <= 0 or trials_control <= 0:
        return None
    for k, n in ((successes_canary, trials_canary), (successes_control, trials_control)):
        if not 0 <= k <= n:
            raise ValueError(f"successes must lie in [0, {n}], got {k}")
    pc = _shrunk_share(successes_canary, trials_canary)
    pk = _shrunk_share(successes_control, trials_control)
    pooled = _shrunk_share(successes_canary + successes_control, trials_canary + trials_control)
    return Evidence(
        difference=successes_canary / trials_canary - successes_control / trials_control,
        variance=pc * (1.0 - pc) / trials_canary + pk * (1.0 - pk) / trials_control,
        null_variance=pooled * (1.0 - pooled) * (1.0 / trials_canary + 1.0 / trials_control),
    )


def combine(evidence: Iterable[Evidence | None]) -> Evidence | None:
    """Stratified combination of independent phase estimates, weighted by null information.

    Each phase compares arms randomised at the same time under the same weights, so its
    difference is free of any time trend. Weighting phase k by 1 / null_variance_k (within a
    phase that is n_canary n_control / (n_canary + n_control) / (p (1 - p)), the Cochran-
    Mantel-Haenszel weight for a risk difference, scaled) makes the score difference /
    null_variance a sum of independent increments whose variance is the summed information:
    a Gaussian random walk in information time, which is what the mSPRT needs to stay valid
    across phases. The unpooled variance of the same weighted estimate is carried along.
    """
    weight = 0.0
    score = 0.0
    spread = 0.0
    for item in evidence:
        if item is None:
            continue
        w = 1.0 / item.null_variance
        weight += w
        score += w * item.difference
        spread += w * w * item.variance
    if weight == 0.0:
        return None
    return Evidence(
        difference=score / weight,
        variance=spread / (weight * weight),
        null_variance=1.0 / weight,
    )


def log_mixture_likelihood_ratio(evidence: Evidence, tau: float) -> float:
    """log Lambda of the normal-mixture SPRT for H0: no difference."""
    if tau <= 0.0:
        raise ValueError(f"tau must be > 0, got {tau}")
    v = evidence.null_variance
    t2 = tau * tau
    shift = evidence.difference
    return 0.5 * math.log(v / (v + t2)) + t2 * shift * shift / (2.0 * v * (v + t2))


def confidence_sequence(evidence: Evidence, alpha: float, tau: float) -> Interval:
    """The differences the mSPRT does not reject at level alpha: theta_hat +- radius."""
    v = evidence.variance
    t2 = tau * tau
    radius = math.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((v + t2) / v)))
    d = evidence.difference
    return Interval(estimate=d, low=d - radius, high=d + radius, confidence=1.0 - alpha)


def msprt(
    evidence: Evidence,
    alpha: float = 0.05,
    tau: float = 0.05,
    previous_p_value: float = 1.0,
) -> SequentialResult:
    """Run the mSPRT at this look; pass the last look's p-value to keep the running minimum."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    log_lr = log_mixture_likelihood_ratio(evidence, tau)
    # exp(-log_lr) underflows to 0.0 for overwhelming evidence, which is the right answer.
    p_now = 1.0 if log_lr <= 0.0 else math.exp(-log_lr)
    return SequentialResult(
        difference=evidence.difference,
        variance=evidence.variance,
        null_variance=evidence.null_variance,
        log_likelihood_ratio=log_lr,
        p_value=min(previous_p_value, p_now),
        confidence_sequence=confidence_sequence(evidence, alpha, tau),
        alpha=alpha,
        tau=tau,
    )
