"""Per-variant statistics of an experiment across its phases, each variant against control."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rollout.distributions import two_sided_z
from rollout.intervals import Interval, mean_interval, newcombe, wilson
from rollout.model import Phase, VariantCounts, VariantReport
from rollout.sequential import Evidence, combine, msprt, share_evidence
from rollout.srm import SrmResult, combine_srm, srm_test


def variant_names(phases: Sequence[Phase], control: str, canary: str) -> list[str]:
    """Control first, then canary, then any other variant seen in weights or counts, sorted."""
    seen: set[str] = set()
    for phase in phases:
        seen.update(phase.weights, phase.counts)
    rest = sorted(seen - {control, canary})
    return [control, canary, *rest]


def total(phases: Sequence[Phase], variant: str) -> VariantCounts:
    """A variant's counts summed over phases (units summed too: an upper bound on distinct)."""
    parts = [phase.of(variant) for phase in phases]
    units = [p.units for p in parts]
    return VariantCounts(
        exposures=sum(p.exposures for p in parts),
        units=None if not parts or any(u is None for u in units) else sum(u or 0 for u in units),
        positive=sum(p.positive for p in parts),
        negative=sum(p.negative for p in parts),
        rating_count=sum(p.rating_count for p in parts),
        rating_sum=sum(p.rating_sum for p in parts),
        rating_sum_sq=sum(p.rating_sum_sq for p in parts),
    )


def phase_evidence(phase: Phase, variant: str, control: str) -> Evidence | None:
    """Share difference of variant minus control within one phase; None if an arm lacks feedback."""
    a, b = phase.of(variant), phase.of(control)
    return share_evidence(a.positive, a.feedback, b.positive, b.feedback)


def stratified_evidence(phases: Sequence[Phase], variant: str, control: str) -> Evidence | None:
    """Phase-by-phase differences combined without the bias a change of weights brings."""
    return combine(phase_evidence(phase, variant, control) for phase in phases)


def naive_evidence(phases: Sequence[Phase], variant: str, control: str) -> Evidence | None:
    """Counts pooled over phases, then compared: biased when weights and the metric both drift."""
    a, b = total(phases, variant), total(phases, control)
    return share_evidence(a.positive, a.feedback, b.positive, b.feedback)


def wald(evidence: Evidence, confidence: float) -> Interval:
    """Normal interval around an estimate with its unpooled variance."""
    half = two_sided_z(confidence) * math.sqrt(evidence.variance)
    d = evidence.difference
    return Interval(estimate=d, low=d - half, high=d + half, confidence=confidence)


def srm(phases: Sequence[Phase]) -> tuple[SrmResult, SrmResult]:
    """Sample ratio mismatch over all phases and in the current one."""
    per_phase = [
        srm_test({name: c.exposures for name, c in phase.counts.items()}, phase.weights)
        for phase in phases
    ]
    current = per_phase[-1] if per_phase else combine_srm([])
    return combine_srm(per_phase), current


def variant_report(
    phases: Sequence[Phase],
    name: str,
    control: str,
    *,
    alpha: float,
    tau: float,
    confidence: float,
    previous_p_value: float = 1.0,
) -> VariantReport:
    """Counts, shares and (for a non-control variant) its comparison with control."""
    counts = total(phases, name)
    share = wilson(counts.positive, counts.feedback, confidence) if counts.feedback else None
    rating = (
        mean_interval(counts.rating_count, counts.rating_sum, counts.rating_sum_sq, confidence)
        if counts.rating_count >= 2
        else None
    )
    report = VariantReport(
        name=name,
        exposures=counts.exposures,
        units=counts.units,
        positive=counts.positive,
        negative=counts.negative,
        share=share,
        rating=rating,
    )
    if name == control:
        return report
    evidence = stratified_evidence(phases, name, control)
    base = total(phases, control)
    current = phases[-1].of(name) if phases else VariantCounts()
    current_control = phases[-1].of(control) if phases else VariantCounts()
    return report.model_copy(
        update={
            "difference": wald(evidence, confidence) if evidence else None,
            "difference_current_phase": (
                newcombe(
                    current.positive,
                    current.feedback,
                    current_control.positive,
                    current_control.feedback,
                    confidence,
                )
                if current.feedback and current_control.feedback
                else None
            ),
            "relative_lift": (
                evidence.difference / (base.positive / base.feedback)
                if evidence and base.positive
                else None
            ),
            "sequential": (
                msprt(evidence, alpha, tau, previous_p_value) if evidence is not None else None
            ),
        }
    )
