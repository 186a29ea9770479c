"""Evaluator scores in an experiment (pure): per-variant means, the always-valid difference,
the thumbs-up rate by prediction-powered inference, agreement with thumbs, and the checks the
decision reads when a plan names an evaluator as its primary metric or a guardrail.

Scores come from the experiment counters (`score:` and `lscore:` fields, rollout/counters.py),
per evaluator version: a judge's new rubric is a new version, never mixed with the old one.
"""

from __future__ import annotations

import math
from typing import Any

from rollout.counters import (
    LABELLED,
    SCORE,
    ExperimentCounts,
    Tally,
    parse_score_field,
    score_field,
)
from rollout.distributions import two_sided_z
from rollout.means import Moments, mean_evidence
from rollout.model import GuardrailCheck, ScoreComparison
from rollout.plan import GuardrailSpec, RolloutPlan, ScoreMetric
from rollout.ppi import LabelledMoments, PPIResult, ppi_from_moments
from rollout.readout import merged, phase_spans
from rollout.sequential import Evidence, combine, msprt

# The mSPRT's mixing sd for a difference of mean scores when the plan does not say: a quarter
# of a judge's 1-5 grade (rollout/means.py).
DEFAULT_SCORE_TAU = 0.25


def _split_versions(counts: ExperimentCounts) -> list[int]:
    return [m.version for m in counts.versions if not m.killed]


def moments_of(tally: Tally, evaluator: str, version: str) -> Moments:
    """An evaluator version's score moments in one tally."""
    n, s, sq = (tally.get(score_field(SCORE, st, evaluator, version)) for st in ("n", "sum", "sq"))
    return Moments(count=int(n), total=s, total_sq=max(0.0, sq))


def labelled_of(tally: Tally, evaluator: str, version: str) -> LabelledMoments:
    """The moments of the answers in one tally that got thumbs, with their scores."""
    stats = [
        tally.get(score_field(LABELLED, st, evaluator, version))
        for st in ("n", "y", "yf", "f", "ff")
    ]
    return LabelledMoments(
        count=int(stats[0]),
        labels=stats[1],
        label_scores=stats[2],
        scores=stats[3],
        scores_sq=max(0.0, stats[4]),
    )


def evaluator_versions(counts: ExperimentCounts) -> dict[str, dict[str, int]]:
    """Evaluator -> version -> scores counted (every variant, split versions)."""
    found: dict[str, dict[str, int]] = {}
    split = set(_split_versions(counts))
    for (flag_version, _), tally in counts.tallies.items():
        if flag_version not in split:
            continue
        for name, value in tally.fields.items():
            parsed = parse_score_field(name)
            if parsed is None or parsed[0] != SCORE or parsed[1] != "n":
                continue
            per = found.setdefault(parsed[2], {})
            per[parsed[3]] = per.get(parsed[3], 0) + int(value)
    return found


def pick_version(counts: ExperimentCounts, evaluator: str, pinned: str | None) -> str | None:
    """The pinned version, else the one with the most scores (None: never scored)."""
    if pinned is not None:
        return pinned
    versions = evaluator_versions(counts).get(evaluator, {})
    return max(versions, key=lambda v: (versions[v], v)) if versions else None


def compare_scores(
    counts: ExperimentCounts,
    canary: str,
    control: str,
    evaluator: str,
    version: str | None,
    *,
    alpha: float = 0.05,
    tau: float = DEFAULT_SCORE_TAU,
    previous_p_value: float = 1.0,
    minimum: int = 0,
) -> ScoreComparison:
    """Mean score of canary against control: stratified by phase, mSPRT for means."""
    metric = f"score:{evaluator}"
    if version is None:
        return ScoreComparison(metric=metric, evaluator=evaluator, version=None, minimum=minimum)
    evidence: list[Evidence | None] = []
    totals = {canary: Moments(), control: Moments()}
    for span in phase_spans(counts.versions):
        arms = {
            name: moments_of(merged(counts, span.versions, name), evaluator, version)
            for name in (canary, control)
        }
        # Within a phase both arms were randomised under the same weights at the same time.
        evidence.append(mean_evidence(arms[canary], arms[control]))
        for name, m in arms.items():
            t = totals[name]
            totals[name] = Moments(
                count=t.count + m.count, total=t.total + m.total, total_sq=t.total_sq + m.total_sq
            )
    combined = combine(evidence)
    return ScoreComparison(
        metric=metric,
        evaluator=evaluator,
        version=version,
        canary=totals[canary].mean if totals[canary].count else None,
        control=totals[control].mean if totals[control].count else None,
        canary_count=totals[canary].count,
        control_count=totals[control].count,
        minimum=minimum,
        sequential=msprt(combined, alpha, tau, previous_p_value) if combined else None,
    )


def approval(
    counts: ExperimentCounts, variant: str, evaluator: str, version: str, confidence: float = 0.95
) -> PPIResult | None:
    """A variant's thumbs-up rate by PPI from its scores and thumbs; None below 2 of each."""
    tally = merged(counts, _split_versions(counts), variant)
    scored, labelled = moments_of(tally, evaluator, version), labelled_of(tally, evaluator, version)
    # The labelled answers were scored too: the unlabelled rest is the difference.
    rest = scored.count - labelled.count
    if labelled.count < 2 or rest < 2:
        return None
    return ppi_from_moments(
        labelled,
        rest,
        scored.total - labelled.scores,
        max(0.0, scored.total_sq - labelled.scores_sq),
        confidence,
    )


def _variance(result: PPIResult) -> float:
    iv = result.interval
    half = (iv.high - iv.low) / 2.0
    return (half / two_sided_z(iv.confidence)) ** 2


def compare_approval(
    counts: ExperimentCounts,
    canary: str,
    control: str,
    evaluator: str,
    version: str | None,
    *,
    alpha: float = 0.05,
    tau: float = 0.05,
    previous_p_value: float = 1.0,
    minimum: int = 0,
) -> ScoreComparison:
    """Thumbs-up rate of canary minus control, each by PPI, with the mSPRT on the difference.

    The two arms' estimates are independent, so the variance of the difference is the sum of
    theirs; it stands in for the null variance too (no pooled form for PPI estimates).
    """
    metric = f"approval:{evaluator}"
    if version is None:
        return ScoreComparison(metric=metric, evaluator=evaluator, version=None, minimum=minimum)
    split = _split_versions(counts)
    n = {
        name: labelled_of(merged(counts, split, name), evaluator, version).count
        for name in (canary, control)
    }
    found = {name: approval(counts, name, evaluator, version) for name in (canary, control)}
    sequential = None
    a, b = found[canary], found[control]
    if a is not None and b is not None:
        variance = _variance(a) + _variance(b)
        if variance > 0.0:
            diff = a.interval.estimate - b.interval.estimate
            ev = Evidence(difference=diff, variance=variance, null_variance=variance)
            sequential = msprt(ev, alpha, tau, previous_p_value)
    return ScoreComparison(
        metric=metric,
        evaluator=evaluator,
        version=version,
        canary=a.interval.estimate if a else None,
        control=b.interval.estimate if b else None,
        canary_count=n[canary],
        control_count=n[control],
        minimum=minimum,
        sequential=sequential,
    )


def primary_comparison(
    counts: ExperimentCounts, plan: RolloutPlan, previous_p_value: float = 1.0
) -> ScoreComparison | None:
    """The plan's evaluator primary metric now; None when the primary is feedback."""
    metric: ScoreMetric | None = plan.score_primary
    if metric is None:
        return None
    version = pick_version(counts, metric.evaluator, metric.version)
    if metric.ppi:
        return compare_approval(
            counts, plan.canary, plan.control, metric.evaluator, version,
            alpha=plan.alpha, tau=metric.tau or plan.tau, previous_p_value=previous_p_value,
            minimum=metric.min_labels,
        )  # fmt: skip
    return compare_scores(
        counts, plan.canary, plan.control, metric.evaluator, version,
        alpha=plan.alpha, tau=metric.tau or DEFAULT_SCORE_TAU, previous_p_value=previous_p_value,
        minimum=metric.min_scores,
    )  # fmt: skip


def check_score_guardrail(
    spec: GuardrailSpec, found: ScoreComparison, min_sample: int
) -> GuardrailCheck:
    """Breach once the confidence sequence's upper end is below -max_decrease; ok once its
    lower end is at or above it; until then too little sample (the canary may not move up)."""
    name, margin = spec.metric, spec.max_decrease
    limit = None if found.control is None else found.control - margin
    unit = " pp" if spec.score_kind == "approval" else ""
    scale = 100.0 if spec.score_kind == "approval" else 1.0

    def check(status: Any, reason: str) -> GuardrailCheck:
        return GuardrailCheck(
            name=name,
            canary=found.canary,
            control=found.control,
            limit=limit,
            status=status,
            reason=reason,
        )

    if found.version is None:
        return check("no_data", f"{name}: no scores from evaluator {found.evaluator!r}")
    fewest = min(found.canary_count, found.control_count)
    what = "labelled answers" if spec.score_kind == "approval" else "scores"
    if fewest < min_sample or found.sequential is None:
        return check("low_sample", f"{name}: {fewest} {what} in the smaller arm, need {min_sample}")
    cs = found.sequential.confidence_sequence
    band = (
        f"difference {scale * cs.estimate:+.3g}{unit} (CS {scale * cs.low:+.3g}, "
        f"{scale * cs.high:+.3g}), allowed -{scale * margin:.3g}{unit}"
    )
    if cs.high < -margin:
        return check("breach", f"{name} breached: canary worse by more than allowed ({band})")
    if cs.low >= -margin:
        return check("ok", f"{name} ok ({band})")
    return check("low_sample", f"{name}: not yet shown within the margin ({band})")


def score_checks(
    counts: ExperimentCounts, plan: RolloutPlan, min_sample: int
) -> list[GuardrailCheck]:
    """The plan's evaluator guardrails, checked."""
    out = []
    for spec in plan.guardrails:
        if spec.score_kind is None:
            continue
        version = pick_version(counts, spec.evaluator, spec.version)
        if spec.score_kind == "approval":
            found = compare_approval(
                counts, plan.canary, plan.control, spec.evaluator, version,
                alpha=plan.alpha, tau=plan.tau,
            )  # fmt: skip
        else:
            found = compare_scores(
                counts, plan.canary, plan.control, spec.evaluator, version, alpha=plan.alpha
            )
        out.append(check_score_guardrail(spec, found, min_sample))
    return out


def point_biserial(labelled: LabelledMoments) -> float | None:
    """Correlation of score with thumbs up (1) vs down (0); None without both or any spread."""
    n = labelled.count
    if n < 2:
        return None
    y_bar, f_bar = labelled.labels / n, labelled.scores / n
    var_y = labelled.labels / n - y_bar * y_bar
    var_f = labelled.scores_sq / n - f_bar * f_bar
    if var_y <= 0.0 or var_f <= 1e-12:
        return None
    cov = labelled.label_scores / n - y_bar * f_bar
    return max(-1.0, min(1.0, cov / math.sqrt(var_y * var_f)))


def scores_view(
    counts: ExperimentCounts, canary: str, control: str, variants: list[str], alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Per evaluator (its most scored version): each variant's mean score, the difference
    against control with its confidence sequence, PPI approval, and agreement with thumbs."""
    out = []
    split = _split_versions(counts)
    for evaluator, versions in sorted(evaluator_versions(counts).items()):
        version = max(versions, key=lambda v: (versions[v], v))
        rows = []
        pooled = LabelledMoments()
        for name in variants:
            tally = merged(counts, split, name)
            m, lab = moments_of(tally, evaluator, version), labelled_of(tally, evaluator, version)
            pooled = LabelledMoments(
                count=pooled.count + lab.count,
                labels=pooled.labels + lab.labels,
                label_scores=pooled.label_scores + lab.label_scores,
                scores=pooled.scores + lab.scores,
                scores_sq=pooled.scores_sq + lab.scores_sq,
            )
            diff = None
            if name != control:
                found = compare_scores(counts, name, control, evaluator, version, alpha=alpha)
                if found.sequential is not None:
                    diff = {
                        "p_value": found.sequential.p_value,
                        "confidence_sequence": found.sequential.confidence_sequence.model_dump(
                            mode="json"
                        ),
                    }
            ppi = approval(counts, name, evaluator, version)
            rows.append(
                {
                    "name": name,
                    "role": {control: "control", canary: "canary"}.get(name, ""),
                    "scores": m.count,
                    "mean": m.mean if m.count else None,
                    "vs_control": diff,
                    "labelled": lab.count,
                    "thumbs_up": int(lab.labels),
                    "approval_ppi": ppi.interval.model_dump(mode="json") if ppi else None,
                    "approval_human_only": ppi.human_only.model_dump(mode="json") if ppi else None,
                }
            )
        out.append(
            {
                "evaluator": evaluator,
                "version": version,
                "other_versions": {v: c for v, c in sorted(versions.items()) if v != version},
                "variants": rows,
                "agreement": {"labelled": pooled.count, "point_biserial": point_biserial(pooled)},
            }
        )
    return out
