"""From counters to the statistics' input: phases, guardrail values and per-variant metrics (pure).

Counters are kept per flag version; a phase is a run of consecutive versions with the same
weights (a description edit bumps the version but does not change who is in which arm).
Versions under the kill switch split nothing and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from rollout.counters import (
    COMPLETIONS,
    ERRORS,
    EXPOSURES,
    LATENCY,
    RATING_N,
    RATING_SQ,
    RATING_SUM,
    SAFETY,
    TTFT,
    ExperimentCounts,
    Tally,
    VersionMeta,
    quantile,
)
from rollout.model import ExperimentInput, Guardrail, Phase, VariantCounts
from rollout.plan import PRIMARY_KINDS, GuardrailSpec, RolloutPlan


class PhaseSpan(BaseModel):
    """Which flag versions a phase covers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    versions: tuple[int, ...]
    weights: dict[str, float]
    started_at: float
    ended_at: float | None


class VariantMetrics(BaseModel):
    """Operational and feedback numbers of one variant over the experiment (for reading)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    exposures: int
    completions: int
    errors: int
    error_rate: float | None
    latency_p95: float | None
    ttft_p95: float | None
    safety_rate: float | None
    feedback: dict[str, int]
    thumbs_down_share: float | None
    regenerate_rate: float | None


def phase_spans(versions: Sequence[VersionMeta]) -> list[PhaseSpan]:
    spans: list[PhaseSpan] = []
    current: list[VersionMeta] = []

    def close(ended: float | None) -> None:
        if current:
            spans.append(
                PhaseSpan(
                    versions=tuple(m.version for m in current),
                    weights=current[0].weights,
                    started_at=current[0].seen_at,
                    ended_at=ended,
                )
            )

    for meta in versions:
        if meta.killed:
            close(meta.seen_at)
            current = []
            continue
        if current and meta.weights != current[0].weights:
            close(meta.seen_at)
            current = []
        current.append(meta)
    close(None)
    return spans


def merged(counts: ExperimentCounts, versions: Sequence[int], variant: str) -> Tally:
    out = Tally(units=0)
    for version in versions:
        tally = counts.tallies.get((version, variant))
        if tally is not None:
            out.add(tally)
    return out


def _variant_counts(tally: Tally, primary: str) -> VariantCounts:
    positive, negative = PRIMARY_KINDS[primary]
    return VariantCounts(
        exposures=int(tally.get(EXPOSURES)),
        units=tally.units,
        positive=tally.feedback(positive),
        negative=tally.feedback(negative),
        rating_count=int(tally.get(RATING_N)),
        rating_sum=tally.get(RATING_SUM),
        rating_sum_sq=tally.get(RATING_SQ),
    )


def phases(counts: ExperimentCounts, primary: str = "thumbs") -> list[Phase]:
    """Phases with each variant's counts, oldest first."""
    out = []
    for span in phase_spans(counts.versions):
        out.append(
            Phase(
                started_at=span.started_at,
                ended_at=span.ended_at,
                weights=span.weights,
                counts={
                    name: _variant_counts(merged(counts, span.versions, name), primary)
                    for name in span.weights
                },
            )
        )
    return out


def variant_totals(counts: ExperimentCounts, variant: str) -> Tally:
    """A variant's tallies summed over every split (not killed) version."""
    versions = [m.version for m in counts.versions if not m.killed]
    return merged(counts, versions, variant)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def variant_metrics(counts: ExperimentCounts, variant: str) -> VariantMetrics:
    """Error rate, p95s, safety and feedback shares of one variant."""
    t = variant_totals(counts, variant)
    completions, errors = int(t.get(COMPLETIONS)), int(t.get(ERRORS))
    feedback = {name[3:]: int(v) for name, v in sorted(t.fields.items()) if name.startswith("fb:")}
    up, down = feedback.get("thumbs_up", 0), feedback.get("thumbs_down", 0)
    return VariantMetrics(
        name=variant,
        exposures=int(t.get(EXPOSURES)),
        completions=completions,
        errors=errors,
        error_rate=_ratio(errors, completions + errors),
        latency_p95=quantile(t.histogram(LATENCY), 0.95),
        ttft_p95=quantile(t.histogram(TTFT), 0.95),
        safety_rate=_ratio(t.get(SAFETY), completions),
        feedback=feedback,
        thumbs_down_share=_ratio(down, up + down),
        regenerate_rate=_ratio(feedback.get("regenerate", 0), completions),
    )


def _sample(metrics: VariantMetrics, metric: str) -> int:
    if metric == "thumbs_down_share":
        return metrics.feedback.get("thumbs_up", 0) + metrics.feedback.get("thumbs_down", 0)
    if metric in ("latency_p95", "ttft_p95", "safety_rate", "regenerate_rate"):
        return metrics.completions
    return metrics.completions + metrics.errors


def guardrails(
    specs: Sequence[GuardrailSpec], canary: VariantMetrics, control: VariantMetrics
) -> list[Guardrail]:
    """Guardrail values for the decision, canary against control."""
    return [
        Guardrail(
            name=spec.metric,
            canary=getattr(canary, spec.metric),
            control=getattr(control, spec.metric),
            max_relative_increase=spec.max_relative_increase,
            absolute_slack=spec.absolute_slack,
            canary_sample=_sample(canary, spec.metric),
        )
        for spec in specs
        if spec.score_kind is None  # evaluator guardrails: rollout/scores.py checks them
    ]


def experiment_input(
    counts: ExperimentCounts,
    plan: RolloutPlan,
    step: int,
    now: float,
    previous_p_value: float = 1.0,
) -> ExperimentInput:
    """Everything decide() needs for a plan at step index `step`."""
    # Evaluator metrics read phases and merged tallies from here: imported late, no cycle.
    from rollout.scores import primary_comparison, score_checks

    policy = plan.policy(max(step, 0))
    return ExperimentInput(
        flag=plan.flag,
        control=plan.control,
        canary=plan.canary,
        now=now,
        phases=phases(counts, plan.primary_kind),
        guardrails=guardrails(
            plan.guardrails,
            variant_metrics(counts, plan.canary),
            variant_metrics(counts, plan.control),
        ),
        policy=policy,
        previous_p_value=previous_p_value,
        primary_score=primary_comparison(counts, plan, previous_p_value),
        score_checks=score_checks(counts, plan, policy.min_guardrail_sample),
    )
