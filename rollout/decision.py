"""The rollout decision: a pure function from counts, guardrails and policy to a report.

Order of precedence, first match wins (docs/experiments.md explains each):
1. a guardrail breached on enough sample            -> rollback
2. no exposures at all                              -> insufficient_data
3. sample ratio mismatch                            -> hold (the comparison cannot be trusted)
4. enough sample and the sequential test says worse -> rollback
   (the primary metric's test: feedback, or the plan's evaluator metric, rollout/scores.py;
   evaluator guardrails arrive checked, in x.score_checks, and join step 1 and 5)
5. too little sample, exposure, time or guardrail data so far -> insufficient_data
6. a guardrail without data                         -> hold (never act on missing data)
7. last step: promote (or hold while "better" is required and not shown)
8. otherwise                                        -> advance
"""

from __future__ import annotations

from rollout.experiment import srm, total, variant_names, variant_report
from rollout.model import (
    Decision,
    ExperimentInput,
    ExperimentReport,
    Guardrail,
    GuardrailCheck,
    Policy,
    ScoreComparison,
    VariantCounts,
)


def check_guardrail(guardrail: Guardrail, policy: Policy) -> GuardrailCheck:
    """Compare canary against control within the guardrail's margin."""
    g = guardrail
    if g.canary is None or g.control is None:
        missing = "canary" if g.canary is None else "control"
        return GuardrailCheck(
            name=g.name,
            canary=g.canary,
            control=g.control,
            limit=None,
            status="no_data",
            reason=f"{g.name}: no {missing} value",
        )
    if g.higher_is_worse:
        limit = g.control * (1.0 + g.max_relative_increase) + g.absolute_slack
        breached = g.canary > limit
        side = "above"
    else:
        limit = g.control * (1.0 - g.max_relative_increase) - g.absolute_slack
        breached = g.canary < limit
        side = "below"
    return _verdict(g, limit, breached, side, policy)


def _verdict(
    g: Guardrail, limit: float, breached: bool, side: str, policy: Policy
) -> GuardrailCheck:
    values = f"canary {g.canary:.4g} vs control {g.control:.4g}, limit {limit:.4g}"
    if g.canary_sample < policy.min_guardrail_sample:
        return GuardrailCheck(
            name=g.name,
            canary=g.canary,
            control=g.control,
            limit=limit,
            status="low_sample",
            reason=(
                f"{g.name}: {g.canary_sample} canary observations, "
                f"need {policy.min_guardrail_sample} ({values})"
            ),
        )
    if breached:
        return GuardrailCheck(
            name=g.name,
            canary=g.canary,
            control=g.control,
            limit=limit,
            status="breach",
            reason=f"{g.name} breached: {side} limit ({values})",
        )
    return GuardrailCheck(
        name=g.name,
        canary=g.canary,
        control=g.control,
        limit=limit,
        status="ok",
        reason=f"{g.name} ok ({values})",
    )


def _feedback_gaps(canary: VariantCounts, control: VariantCounts, policy: Policy) -> list[str]:
    """What the primary metric still lacks before its test may move the rollout."""
    gaps = []
    for arm, counts in (("canary", canary), ("control", control)):
        if counts.feedback < policy.min_feedback:
            gaps.append(f"{arm} has {counts.feedback} feedback events, need {policy.min_feedback}")
        fewest = min(counts.positive, counts.negative)
        if fewest < policy.min_outcomes:
            gaps.append(
                f"{arm} has {fewest} of its rarer outcome, need {policy.min_outcomes} "
                "for the normal approximation"
            )
    return gaps


def _score_gaps(score: ScoreComparison) -> list[str]:
    """What an evaluator primary metric still lacks before its test may move the rollout."""
    what = "labelled answers" if score.metric.startswith("approval:") else "scores"
    if score.version is None:
        return [f"{score.metric}: no scores from evaluator {score.evaluator!r} yet"]
    gaps = [
        f"{arm} has {count} {what} ({score.metric}), need {score.minimum}"
        for arm, count in (("canary", score.canary_count), ("control", score.control_count))
        if count < score.minimum
    ]
    if not gaps and score.sequential is None:
        gaps.append(f"{score.metric}: no spread in the scores yet")
    return gaps


def _step_gaps(current: VariantCounts, elapsed: float, policy: Policy) -> list[str]:
    """What the current step still lacks before the canary may move up."""
    gaps = []
    if current.exposures < policy.min_exposures:
        gaps.append(
            f"canary has {current.exposures} exposures this step, need {policy.min_exposures}"
        )
    if elapsed < policy.min_duration_s:
        gaps.append(f"step has run {elapsed:.0f} s, need {policy.min_duration_s:.0f} s")
    return gaps


def decide(experiment: ExperimentInput) -> ExperimentReport:
    """Statistics per variant and what the rollout should do next, with reasons."""
    x = experiment
    policy = x.policy
    phases = x.phases
    reports = [
        variant_report(
            phases,
            name,
            x.control,
            alpha=policy.alpha,
            tau=policy.tau,
            confidence=policy.confidence,
            # The running p belongs to the primary metric's test: with an evaluator primary,
            # the feedback test shown beside it starts from its own look.
            previous_p_value=(
                x.previous_p_value if name == x.canary and x.primary_score is None else 1.0
            ),
        )
        for name in variant_names(phases, x.control, x.canary)
    ]
    canary_report = reports[1]
    sequential = canary_report.sequential
    score = x.primary_score
    if score is not None:
        # An evaluator metric is the primary: its test decides, feedback is shown beside it.
        sequential = score.sequential
    p_value = sequential.p_value if sequential else x.previous_p_value
    srm_all, srm_now = srm(phases)
    checks = [check_guardrail(g, policy) for g in x.guardrails] + list(x.score_checks)

    def report(decision: Decision, reasons: list[str]) -> ExperimentReport:
        return ExperimentReport(
            flag=x.flag,
            control=x.control,
            canary=x.canary,
            now=x.now,
            phases=len(phases),
            current_phase_started_at=phases[-1].started_at if phases else None,
            variants=reports,
            srm=srm_all,
            srm_current_phase=srm_now,
            guardrails=checks,
            p_value=p_value,
            decision=decision,
            reasons=reasons,
            primary_score=score,
        )

    breaches = [c.reason for c in checks if c.status == "breach"]
    if breaches:
        return report("rollback", breaches)

    canary, control = total(phases, x.canary), total(phases, x.control)
    if canary.exposures == 0 or control.exposures == 0:
        return report("insufficient_data", ["no exposures yet for canary or control"])

    if srm_all.p_value < policy.srm_alpha or srm_now.p_value < policy.srm_alpha:
        worst = min(srm_all, srm_now, key=lambda r: r.p_value)
        stray = f", {worst.stray_units} units in zero-weight arms" if worst.stray_units else ""
        return report(
            "hold",
            [
                f"sample ratio mismatch: chi-square {worst.statistic:.1f} on {worst.df} df, "
                f"p = {worst.p_value:.2g} < {policy.srm_alpha}{stray}; "
                "assignment is broken, statistics cannot be trusted"
            ],
        )

    feedback_gaps = _feedback_gaps(canary, control, policy) if score is None else _score_gaps(score)
    metric = "the primary metric" if score is None else score.metric
    if not feedback_gaps and sequential is not None:
        worse = p_value <= policy.alpha and sequential.difference < 0.0
        if worse:
            cs = sequential.confidence_sequence
            return report(
                "rollback",
                [
                    f"canary worse on {metric}: difference {sequential.difference:+.4f} "
                    f"(confidence sequence {cs.low:+.4f} to {cs.high:+.4f}), "
                    f"always-valid p = {p_value:.3g} <= {policy.alpha}"
                ],
            )

    # A clock behind the phase start counts as no time elapsed, never as negative.
    elapsed = max(0.0, x.now - phases[-1].started_at)
    gaps = [
        *feedback_gaps,
        *_step_gaps(phases[-1].of(x.canary), elapsed, policy),
        *(c.reason for c in checks if c.status == "low_sample"),
    ]
    if gaps:
        return report("insufficient_data", gaps)

    missing = [c.reason for c in checks if c.status == "no_data"]
    if missing:
        return report("hold", [*missing, "a guardrail without data is never taken as passing"])

    held = [f"{len(checks)} guardrails hold"] if checks else ["no guardrails configured"]
    better = sequential is not None and p_value <= policy.alpha and sequential.difference > 0.0
    verdict = f"primary metric{'' if score is None else ' ' + score.metric}: p = {p_value:.3g}"
    if score is not None and sequential is not None:
        cs = sequential.confidence_sequence
        verdict += f", difference {cs.estimate:+.4g} (CS {cs.low:+.4g}, {cs.high:+.4g})"
    verdict += ", canary better" if better else ""
    if policy.last_step:
        if policy.promote_requires_better and not better:
            return report("hold", [*held, verdict, "last step: promotion needs the canary better"])
        return report("promote", [*held, verdict, "last step passed: promote to 100%"])
    return report("advance", [*held, verdict, "step passed: advance"])
