"""The rollout decision, case by case, including the paths that roll back."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.decision import decide
from rollout.model import ExperimentInput, Guardrail, Phase, Policy, VariantCounts

NOW = 1_700_000_000.0
HOUR = 3600.0


def _counts(exposures: int, feedback: int, share: float) -> VariantCounts:
    positive = round(feedback * share)
    return VariantCounts(exposures=exposures, positive=positive, negative=feedback - positive)


def _phase(
    canary: VariantCounts,
    control: VariantCounts,
    weights: tuple[float, float] = (50.0, 50.0),
    started_at: float = NOW - 2 * HOUR,
) -> Phase:
    return Phase(
        started_at=started_at,
        weights={"control": weights[0], "canary": weights[1]},
        counts={"control": control, "canary": canary},
    )


def _guardrails(error_canary: float = 0.010, sample: int = 2000) -> list[Guardrail]:
    return [
        Guardrail(
            name="error_rate",
            canary=error_canary,
            control=0.010,
            max_relative_increase=0.5,
            absolute_slack=0.002,
            canary_sample=sample,
        ),
        Guardrail(
            name="latency_p95",
            canary=1.9,
            control=2.0,
            max_relative_increase=0.1,
            canary_sample=sample,
        ),
        Guardrail(
            name="ttft_p95",
            canary=0.31,
            control=0.30,
            max_relative_increase=0.2,
            canary_sample=sample,
        ),
        Guardrail(
            name="safety_rate",
            canary=0.001,
            control=0.001,
            max_relative_increase=0.5,
            absolute_slack=0.001,
            canary_sample=sample,
        ),
        Guardrail(
            name="thumbs_down_share",
            canary=0.30,
            control=0.30,
            max_relative_increase=0.1,
            canary_sample=sample,
        ),
    ]


def _input(
    phases: list[Phase],
    guardrails: list[Guardrail] | None = None,
    policy: Policy | None = None,
    previous_p_value: float = 1.0,
) -> ExperimentInput:
    return ExperimentInput(
        flag="support-bot",
        control="control",
        canary="canary",
        now=NOW,
        phases=phases,
        guardrails=_guardrails() if guardrails is None else guardrails,
        policy=policy or Policy(),
        previous_p_value=previous_p_value,
    )


HEALTHY = [_phase(_counts(2000, 600, 0.70), _counts(2000, 600, 0.70))]


def test_no_phases_is_insufficient_data() -> None:
    report = decide(_input([], guardrails=[]))
    assert report.decision == "insufficient_data"
    assert report.variants[0].share is None
    assert report.p_value == 1.0


def test_no_exposures_is_insufficient_data_even_with_guardrail_values() -> None:
    report = decide(_input([_phase(VariantCounts(), VariantCounts())]))
    assert report.decision == "insufficient_data"
    assert report.reasons == ["no exposures yet for canary or control"]


def test_low_sample_is_insufficient_data_and_says_what_is_missing() -> None:
    phases = [_phase(_counts(120, 40, 0.7), _counts(2000, 600, 0.7), (94, 6), started_at=NOW - 60)]
    report = decide(_input(phases))
    assert report.decision == "insufficient_data"
    text = " | ".join(report.reasons)
    assert "canary has 40 feedback events, need 200" in text
    assert "canary has 120 exposures this step, need 500" in text
    assert "step has run 60 s, need 600 s" in text


def test_healthy_canary_advances() -> None:
    report = decide(_input(HEALTHY))
    assert report.decision == "advance"
    assert report.reasons[0] == "5 guardrails hold"
    assert [g.status for g in report.guardrails] == ["ok"] * 5


def test_healthy_canary_at_the_last_step_is_promoted() -> None:
    report = decide(_input(HEALTHY, policy=Policy(last_step=True)))
    assert report.decision == "promote"


def test_guardrail_breach_rolls_back() -> None:
    report = decide(_input(HEALTHY, guardrails=_guardrails(error_canary=0.05)))
    assert report.decision == "rollback"
    assert report.reasons[0].startswith("error_rate breached")


def test_guardrail_breach_rolls_back_before_the_primary_sample_is_in() -> None:
    phases = [_phase(_counts(600, 20, 0.7), _counts(600, 20, 0.7), started_at=NOW - 60)]
    report = decide(_input(phases, guardrails=_guardrails(error_canary=0.2, sample=600)))
    assert report.decision == "rollback"


def test_guardrail_breach_on_too_few_requests_is_not_acted_on() -> None:
    report = decide(_input(HEALTHY, guardrails=_guardrails(error_canary=0.2, sample=20)))
    assert report.decision == "insufficient_data"
    assert any(r.startswith("error_rate: 20 canary observations") for r in report.reasons)


def test_slack_keeps_a_zero_error_control_from_tripping_on_one_error() -> None:
    guardrail = Guardrail(
        name="error_rate",
        canary=0.0005,
        control=0.0,
        max_relative_increase=0.5,
        absolute_slack=0.002,
        canary_sample=2000,
    )
    assert decide(_input(HEALTHY, guardrails=[guardrail])).decision == "advance"


def test_higher_is_better_guardrail_breaches_below() -> None:
    guardrail = Guardrail(
        name="accept_share",
        canary=0.5,
        control=0.7,
        max_relative_increase=0.1,
        canary_sample=2000,
        higher_is_worse=False,
    )
    assert decide(_input(HEALTHY, guardrails=[guardrail])).decision == "rollback"


def test_guardrail_without_data_holds() -> None:
    guardrails = [*_guardrails(), Guardrail(name="ttft_p95_stream", canary=None, control=0.3)]
    report = decide(_input(HEALTHY, guardrails=guardrails))
    assert report.decision == "hold"
    assert "ttft_p95_stream: no canary value" in report.reasons


def test_sequential_test_saying_worse_rolls_back_before_the_step_ends() -> None:
    phases = [_phase(_counts(2000, 800, 0.55), _counts(2000, 800, 0.70), started_at=NOW - 60)]
    report = decide(_input(phases))
    assert report.decision == "rollback"
    assert report.reasons[0].startswith("canary worse on the primary metric")
    assert report.p_value <= 0.05


def test_a_better_canary_is_not_rolled_back() -> None:
    phases = [_phase(_counts(2000, 800, 0.80), _counts(2000, 800, 0.70))]
    report = decide(_input(phases, policy=Policy(last_step=True, promote_requires_better=True)))
    assert report.decision == "promote"
    assert "canary better" in report.reasons[1]


def test_promotion_that_requires_better_holds_on_a_tie() -> None:
    report = decide(_input(HEALTHY, policy=Policy(last_step=True, promote_requires_better=True)))
    assert report.decision == "hold"


def test_worse_on_too_little_feedback_does_not_roll_back() -> None:
    phases = [_phase(_counts(2000, 60, 0.2), _counts(2000, 60, 0.8))]
    report = decide(_input(phases))
    assert report.decision == "insufficient_data"


def test_sample_ratio_mismatch_holds() -> None:
    phases = [_phase(_counts(1700, 600, 0.7), _counts(2300, 600, 0.7))]
    report = decide(_input(phases))
    assert report.decision == "hold"
    assert report.reasons[0].startswith("sample ratio mismatch")
    assert report.srm.p_value < 0.001


def test_phases_with_a_trend_do_not_roll_back_a_better_canary() -> None:
    """Naive pooling would say "much worse" (Simpson); the stratified test does not."""
    early = _phase(
        _counts(500, 500, 0.82), _counts(9500, 9500, 0.80), (95, 5), started_at=NOW - 5 * HOUR
    )
    late = _phase(_counts(5000, 5000, 0.52), _counts(5000, 5000, 0.50), started_at=NOW - HOUR)
    report = decide(_input([early, late]))
    assert report.decision == "advance"
    canary = report.variants[1]
    assert canary.difference is not None
    assert canary.difference.estimate == pytest.approx(0.02)
    assert canary.difference.contains(0.02)
    # The pooled shares shown per variant still tell the naive story, so both are in the report.
    assert canary.share is not None
    assert report.variants[0].share is not None
    assert canary.share.estimate < report.variants[0].share.estimate


def test_report_carries_the_statistics_per_variant() -> None:
    phases = [_phase(_counts(2000, 800, 0.75), _counts(2000, 800, 0.70))]
    report = decide(_input(phases, previous_p_value=0.5))
    control, canary = report.variants
    assert (control.name, canary.name) == ("control", "canary")
    assert control.difference is None
    assert control.sequential is None
    assert canary.share is not None
    assert canary.share.contains(0.75)
    assert canary.difference is not None
    assert canary.difference.estimate == pytest.approx(0.05)
    assert canary.difference_current_phase is not None
    assert canary.relative_lift == pytest.approx(0.05 / 0.70)
    assert canary.sequential is not None
    assert report.p_value == canary.sequential.p_value <= 0.5
    assert report.srm_current_phase.p_value == pytest.approx(1.0)


def test_running_p_value_from_earlier_looks_is_kept() -> None:
    report = decide(_input(HEALTHY, previous_p_value=0.01))
    assert report.p_value == 0.01


def test_same_input_same_report() -> None:
    x = _input(HEALTHY)
    assert decide(x) == decide(x)
    assert decide(x).model_dump_json() == decide(x).model_dump_json()


def test_control_and_canary_must_differ() -> None:
    with pytest.raises(ValidationError):
        ExperimentInput(flag="f", control="a", canary="a", now=NOW)


def test_counts_outside_the_weighted_split_are_refused() -> None:
    with pytest.raises(ValidationError, match="without a weight"):
        Phase(started_at=NOW, weights={"control": 1.0}, counts={"qa": VariantCounts()})
