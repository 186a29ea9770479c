"""Inputs and report of an experiment analysis: counts per phase in, a decision out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.intervals import Interval
from rollout.sequential import SequentialResult
from rollout.srm import SrmResult

Decision = Literal["insufficient_data", "hold", "advance", "rollback", "promote"]
GuardrailStatus = Literal["ok", "breach", "no_data", "low_sample"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class VariantCounts(BaseModel):
    """What one variant saw in one phase: assignments and its primary feedback metric."""

    model_config = _FROZEN

    exposures: int = Field(default=0, ge=0, description="requests assigned by the weighted split")
    units: int | None = Field(default=None, ge=0, description="distinct units, where counted")
    positive: int = Field(default=0, ge=0, description="e.g. thumbs up, or accept")
    negative: int = Field(default=0, ge=0, description="e.g. thumbs down, or reject")
    rating_count: int = Field(default=0, ge=0)
    rating_sum: float = 0.0
    rating_sum_sq: float = Field(default=0.0, ge=0.0)

    @property
    def feedback(self) -> int:
        """Feedback events on the primary metric (positive + negative)."""
        return self.positive + self.negative


class Phase(BaseModel):
    """A stretch of time under one set of weights; a weight change opens the next phase."""

    model_config = _FROZEN

    started_at: float = Field(description="epoch seconds")
    ended_at: float | None = Field(default=None, description="None while it is the current one")
    weights: dict[str, float]
    counts: dict[str, VariantCounts] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _counted_variants_have_weights(self) -> Phase:
        # Counts must come from the weighted split (forced variants and allow lists left
        # out), or sample ratio mismatch would compare them with a weight they never had.
        unknown = sorted(set(self.counts) - set(self.weights))
        if unknown:
            raise ValueError(f"counts for variants without a weight: {unknown}")
        if any(w < 0.0 for w in self.weights.values()):
            raise ValueError("weights must be >= 0")
        return self

    def of(self, variant: str) -> VariantCounts:
        """Counts of a variant in this phase, zero if it saw nothing."""
        return self.counts.get(variant, VariantCounts())


class Guardrail(BaseModel):
    """A metric where the canary may not be worse than control by more than a relative margin.

    Breached when canary > control * (1 + max_relative_increase) + absolute_slack (or the
    mirror image when lower is worse). The slack keeps a control at zero (no errors yet) from
    turning any single canary error into an infinite relative increase.
    """

    model_config = _FROZEN

    name: str = Field(description="error_rate, latency_p95, ttft_p95, safety_rate, ...")
    canary: float | None = None
    control: float | None = None
    max_relative_increase: float = Field(default=0.1, ge=0.0)
    absolute_slack: float = Field(default=0.0, ge=0.0)
    canary_sample: int = Field(default=0, ge=0, description="observations behind the canary value")
    higher_is_worse: bool = True


class Policy(BaseModel):
    """When the statistics are allowed to move a rollout, and at what error rates."""

    model_config = _FROZEN

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="sequential test level")
    tau: float = Field(
        default=0.05, gt=0.0, description="sd of the mSPRT's normal mixing law on the difference"
    )
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="for fixed intervals")
    srm_alpha: float = Field(default=0.001, gt=0.0, lt=1.0)
    min_feedback: int = Field(default=200, ge=1, description="per arm, all phases")
    min_outcomes: int = Field(
        default=10, ge=0, description="positives and negatives per arm before the normal law"
    )
    min_exposures: int = Field(default=500, ge=0, description="canary, current phase")
    min_duration_s: float = Field(default=600.0, ge=0.0, description="current phase")
    min_guardrail_sample: int = Field(default=100, ge=0)
    last_step: bool = Field(default=False, description="the next step up is 100%: promote")
    promote_requires_better: bool = Field(
        default=False, description="promote only once the canary is shown better, not just safe"
    )


class GuardrailCheck(BaseModel):
    """The verdict on one guardrail and why."""

    model_config = _FROZEN

    name: str
    canary: float | None
    control: float | None
    limit: float | None
    status: GuardrailStatus
    reason: str


class ScoreComparison(BaseModel):
    """An evaluator metric, canary against control: `score:<evaluator>` (mean score, mSPRT for
    means) or `approval:<evaluator>` (thumbs-up rate by prediction-powered inference)."""

    model_config = _FROZEN

    metric: str
    evaluator: str
    version: str | None = Field(description="evaluator version compared (model@hash)")
    canary: float | None = None
    control: float | None = None
    canary_count: int = Field(0, ge=0, description="scores, or labelled answers for approval")
    control_count: int = Field(0, ge=0)
    minimum: int = Field(0, ge=0, description="per arm before the test may move the rollout")
    sequential: SequentialResult | None = None


class ExperimentInput(BaseModel):
    """Everything a decision depends on; the decision is a pure function of this."""

    model_config = _FROZEN

    flag: str
    control: str
    canary: str
    now: float = Field(description="epoch seconds")
    phases: list[Phase] = Field(default_factory=list, description="oldest first")
    guardrails: list[Guardrail] = Field(default_factory=list)
    policy: Policy = Field(default_factory=Policy)
    previous_p_value: float = Field(
        default=1.0, ge=0.0, le=1.0, description="the canary's always-valid p at the last look"
    )
    # An evaluator metric as the primary metric (its test replaces the feedback one).
    primary_score: ScoreComparison | None = None
    # Evaluator guardrails, checked already (rollout/scores.py): they need the sequence.
    score_checks: list[GuardrailCheck] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_arms(self) -> ExperimentInput:
        if self.control == self.canary:
            raise ValueError("control and canary must be different variants")
        return self


class VariantReport(BaseModel):
    """One variant over the whole experiment, and against control where it is not control."""

    model_config = _FROZEN

    name: str
    exposures: int
    units: int | None
    positive: int
    negative: int
    share: Interval | None = Field(description="Wilson; None without feedback")
    rating: Interval | None = Field(description="t interval of the mean rating")
    difference: Interval | None = Field(
        default=None, description="share minus control's, stratified by phase (Wald)"
    )
    difference_current_phase: Interval | None = Field(
        default=None, description="Newcombe hybrid score interval, current phase only"
    )
    relative_lift: float | None = Field(default=None, description="difference / control share")
    sequential: SequentialResult | None = Field(default=None, description="mSPRT vs control")


class ExperimentReport(BaseModel):
    """Statistics per variant, the checks behind the decision, and the decision."""

    model_config = _FROZEN

    flag: str
    control: str
    canary: str
    now: float
    phases: int
    current_phase_started_at: float | None
    variants: list[VariantReport]
    srm: SrmResult = Field(description="all phases")
    srm_current_phase: SrmResult
    guardrails: list[GuardrailCheck]
    p_value: float = Field(description="canary vs control, always valid, running minimum")
    decision: Decision
    reasons: list[str]
    primary_score: ScoreComparison | None = Field(
        default=None, description="the evaluator metric decided on, when it is the primary"
    )
