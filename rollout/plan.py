"""Rollout plans (steps, minimum sample, guardrails, primary metric) and the controller's state."""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from rollout.model import Decision, Policy

GuardrailMetric = Literal[
    "error_rate", "latency_p95", "ttft_p95", "safety_rate", "thumbs_down_share", "regenerate_rate"
]
PrimaryMetric = Literal["thumbs", "accept"]
# An evaluator's mean score (`score:rm`) or the thumbs-up rate estimated by prediction-powered
# inference from that evaluator's scores and people's thumbs (`approval:rm`), as guardrails.
ScoreGuardrailMetric = Annotated[str, StringConstraints(pattern=r"^(score|approval):[^:\s]+$")]
RolloutStatus = Literal["running", "rolled_back", "promoted", "paused"]
# "resume" is only ever a person's (the admin API); the controller takes the others.
ActionKind = Literal["start", "advance", "rollback", "promote", "allocate", "hold", "resume"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# Pairs of feedback kinds (positive, negative) each primary metric compares.
PRIMARY_KINDS: dict[str, tuple[str, str]] = {
    "thumbs": ("thumbs_up", "thumbs_down"),
    "accept": ("accept", "reject"),
}


class GuardrailSpec(BaseModel):
    """A metric the canary may not be worse on than control by more than a margin.

    Operational and feedback metrics (error_rate, ...) compare the two values within a relative
    margin. `score:<evaluator>` and `approval:<evaluator>` compare with the always-valid
    confidence sequence of canary minus control: breached once its upper end is below
    -max_decrease (shown worse by more than allowed), passing once its lower end is above it.
    """

    model_config = _FROZEN

    metric: GuardrailMetric | ScoreGuardrailMetric
    max_relative_increase: float = Field(0.1, ge=0.0)
    absolute_slack: float = Field(0.0, ge=0.0)
    # score:/approval: only: the decrease allowed, in score units or as a share (0.05: 5 pp).
    max_decrease: float = Field(0.0, ge=0.0)
    # score:/approval: only: the evaluator version (`model@hash`); None: the most scored one.
    version: str | None = None

    @property
    def score_kind(self) -> Literal["score", "approval"] | None:
        """`score` or `approval` for an evaluator guardrail, else None."""
        kind = self.metric.split(":", 1)[0]
        return kind if kind in ("score", "approval") else None  # type: ignore[return-value]

    @property
    def evaluator(self) -> str:
        """The evaluator an evaluator guardrail reads ('' for the others)."""
        return self.metric.split(":", 1)[1] if self.score_kind else ""


class ScoreMetric(BaseModel):
    """An evaluator as the primary metric: its mean score (mSPRT for means), or with `ppi`
    the thumbs-up rate estimated from its scores plus people's thumbs (rollout/ppi.py)."""

    model_config = _FROZEN

    evaluator: Annotated[str, StringConstraints(pattern=r"^[^:\s]+$")]
    version: str | None = Field(None, description="model@hash; None: the most scored version")
    ppi: bool = False
    tau: float | None = Field(
        None, gt=0.0, description="mSPRT mixing sd; default 0.25 score units, or the plan's tau"
    )
    min_scores: int = Field(200, ge=2, description="scored answers per arm")
    min_labels: int = Field(50, ge=2, description="with ppi: answers with thumbs per arm")


DEFAULT_GUARDRAILS: tuple[GuardrailSpec, ...] = (
    GuardrailSpec(metric="error_rate", max_relative_increase=0.2, absolute_slack=0.01),
    GuardrailSpec(metric="latency_p95", max_relative_increase=0.25, absolute_slack=0.05),
    GuardrailSpec(metric="ttft_p95", max_relative_increase=0.25, absolute_slack=0.05),
    GuardrailSpec(metric="safety_rate", max_relative_increase=0.5, absolute_slack=0.005),
    GuardrailSpec(metric="thumbs_down_share", max_relative_increase=0.2, absolute_slack=0.02),
)


class BanditConfig(BaseModel):
    """Thompson-sampling allocation instead of fixed steps, with a floor share per variant."""

    model_config = _FROZEN

    floor: float = Field(0.05, gt=0.0, lt=0.5)
    # Allocation moves only when a share changes by at least this much (percentage points):
    # every change opens a phase, so jitter would fragment the data.
    min_change: float = Field(2.0, ge=0.0)
    seed: int = 0


class ShadowGate(BaseModel):
    """Before the first canary step: enough judged shadow pairs, and a win rate not below a bound.

    Passes once at least min_pairs pairs are judged and the lower bound of the canary's win
    rate against control (always-valid, at the plan's alpha) is >= min_win_rate; fails once the
    upper bound is below it, or when max_pairs pairs did not show it (docs/shadow.md).
    """

    model_config = _FROZEN

    min_pairs: int = Field(200, ge=1, description="judged pairs before the gate may decide")
    min_win_rate: float = Field(0.45, gt=0.0, lt=1.0, description="bound on the canary's win rate")
    max_pairs: int | None = Field(None, ge=1, description="fail when not passed by this many")

    @model_validator(mode="after")
    def _bounds(self) -> ShadowGate:
        if self.max_pairs is not None and self.max_pairs < self.min_pairs:
            raise ValueError("max_pairs must be at least min_pairs")
        return self


class RolloutPlan(BaseModel):
    """How a canary is ramped on one flag, and what may stop it."""

    model_config = _FROZEN

    flag: str
    control: str
    canary: str
    steps: tuple[float, ...] = Field((1.0, 5.0, 25.0, 50.0, 100.0), min_length=1)
    min_duration_s: float = Field(600.0, ge=0.0, description="per step")
    min_exposures: int = Field(500, ge=0, description="canary exposures per step")
    min_feedback: int = Field(200, ge=1, description="per arm, primary metric")
    min_outcomes: int = Field(10, ge=0)
    min_guardrail_sample: int = Field(100, ge=0)
    guardrails: tuple[GuardrailSpec, ...] = DEFAULT_GUARDRAILS
    # thumbs, accept, or an evaluator: `{evaluator: rm}` or `{evaluator: rm, ppi: true}`.
    primary: PrimaryMetric | ScoreMetric = "thumbs"
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    tau: float = Field(0.05, gt=0.0)
    promote_requires_better: bool = False
    # weight: the canary's weight goes to 0 (units stay sticky for a later retry);
    # kill: the flag's kill switch (everyone to control, rules included).
    rollback: Literal["weight", "kill"] = "weight"
    bandit: BanditConfig | None = None
    # Hold the canary at 0% until the shadow pairs pass this gate (rollout/shadow_gate.py).
    shadow_gate: ShadowGate | None = None

    @field_validator("steps")
    @classmethod
    def _ascending_to_100(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < s <= 100.0 for s in steps):
            raise ValueError("steps are canary percentages in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must ascend")
        if steps[-1] != 100.0:
            raise ValueError("the last step must be 100 (promotion)")
        return steps

    @model_validator(mode="after")
    def _distinct(self) -> RolloutPlan:
        if self.control == self.canary:
            raise ValueError("control and canary must be different variants")
        return self

    @property
    def primary_kind(self) -> PrimaryMetric:
        """The feedback pair phases count (thumbs when the primary metric is a score)."""
        return "thumbs" if isinstance(self.primary, ScoreMetric) else self.primary

    @property
    def score_primary(self) -> ScoreMetric | None:
        """The evaluator metric the decision tests, when the primary metric is one."""
        return self.primary if isinstance(self.primary, ScoreMetric) else None

    def weights(self, canary_share: float) -> dict[str, float]:
        """Weights (percent) that give the canary `canary_share` and control the rest."""
        return {self.canary: canary_share, self.control: 100.0 - canary_share}

    def policy(self, step: int) -> Policy:
        """The decision policy while the canary is at step index `step`."""
        return Policy(
            alpha=self.alpha,
            tau=self.tau,
            min_feedback=self.min_feedback,
            min_outcomes=self.min_outcomes,
            min_exposures=self.min_exposures,
            min_duration_s=self.min_duration_s,
            min_guardrail_sample=self.min_guardrail_sample,
            last_step=step + 1 >= len(self.steps) - 1,
            promote_requires_better=self.promote_requires_better,
        )


class RolloutAction(BaseModel):
    """One thing the controller did (or decided) to a flag, and why."""

    model_config = _FROZEN

    time: float
    action: ActionKind
    decision: Decision | None = None
    from_share: float | None = None
    to_share: float | None = None
    flag_version: int | None = None
    p_value: float | None = None
    reasons: tuple[str, ...] = ()


class RolloutState(BaseModel):
    """Where a rollout is: its step, since when, the running p-value, and its history."""

    model_config = _FROZEN

    flag: str
    status: RolloutStatus = "running"
    step: int = Field(-1, ge=-1, description="index into plan.steps; -1 before the first")
    step_started_at: float | None = None
    share: float | None = Field(None, description="the canary share (percent) last written")
    p_value: float = Field(1.0, ge=0.0, le=1.0)
    flag_version: int | None = None
    last_decision: Decision | None = None
    last_reasons: tuple[str, ...] = ()
    checked_at: float | None = None
    allocations: int = Field(0, ge=0, description="bandit reallocations so far")
    history: tuple[RolloutAction, ...] = ()

    def with_action(self, action: RolloutAction, keep: int = 200) -> RolloutState:
        """A copy with `action` appended; history is bounded (oldest dropped)."""
        return self.model_copy(update={"history": (*self.history, action)[-keep:]})
