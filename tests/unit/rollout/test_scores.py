"""Evaluator scores in experiments: counted moments, PPI from them, and the decisions they drive.

The controller runs on simulated traffic (seeded): every answer scored by an evaluator, a
random share of them thumbed by people, as the gateway's evaluators and recorder count them.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from rollout.controller import Controller
from rollout.counters import ExperimentCounters
from rollout.decision import decide
from rollout.plan import GuardrailSpec, RolloutPlan, ScoreMetric
from rollout.ppi import LabelledMoments, ppi_from_moments, ppi_mean
from rollout.readout import experiment_input
from rollout.scores import compare_scores, point_biserial, scores_view
from rollout.stores.counters import MemoryCounterBackend
from router.stores.base import AuditRecord
from tests.unit.rollout.test_controller import Clock, _plan, _with_controller

VERSION = "judge-model@abc123"


def test_ppi_from_counted_moments_equals_ppi_on_the_values() -> None:
    rng = random.Random(3)
    labels = [1.0 if rng.random() < 0.6 else 0.0 for _ in range(120)]
    label_scores = [2.0 + 1.5 * y + rng.gauss(0, 1) for y in labels]
    unlabelled = [2.0 + 1.5 * (rng.random() < 0.6) + rng.gauss(0, 1) for _ in range(900)]
    direct = ppi_mean(labels, label_scores, unlabelled)
    counted = ppi_from_moments(
        LabelledMoments(
            count=len(labels),
            labels=sum(labels),
            label_scores=sum(y * f for y, f in zip(labels, label_scores, strict=True)),
            scores=sum(label_scores),
            scores_sq=sum(f * f for f in label_scores),
        ),
        len(unlabelled),
        sum(unlabelled),
        sum(f * f for f in unlabelled),
    )
    assert counted.weight == pytest.approx(direct.weight)
    assert counted.interval.estimate == pytest.approx(direct.interval.estimate)
    assert counted.interval.low == pytest.approx(direct.interval.low)
    assert counted.human_only.high == pytest.approx(direct.human_only.high)
    assert 0.0 < counted.weight <= 1.0  # scores that track the labels are used


def test_counted_scores_read_back_per_variant_and_evaluator_version() -> None:
    async def go() -> None:
        lookup = lambda key: (1, {"a": 50.0, "b": 50.0}, False)  # noqa: E731
        counters = ExperimentCounters(MemoryCounterBackend(), lookup, clock=lambda: 1.0)
        rng = random.Random(5)
        for i in range(400):
            variant = "a" if i % 2 else "b"
            liked = rng.random() < (0.3 if variant == "a" else 0.8)
            score = 3.0 + liked + rng.gauss(0, 0.5)
            counters.count_score("bot", 1, variant, "judge", VERSION, score)
            if i < 100:  # an older rubric's scores never mix with the current one's
                counters.count_score("bot", 1, variant, "judge", "judge-model@old", 1.0)
            if i % 4 < 2:
                counters.count_labelled_score("bot", 1, variant, "judge", VERSION, score, liked)
        counts = await counters.read("bot")
        found = compare_scores(counts, "b", "a", "judge", VERSION)
        assert found.canary_count == found.control_count == 200
        assert found.canary is not None
        assert found.control is not None
        assert found.sequential is not None
        assert found.sequential.difference > 0
        (view,) = scores_view(counts, "b", "a", ["a", "b"])
        assert view["evaluator"] == "judge"
        assert view["other_versions"] == {"judge-model@old": 100}
        rows = {r["name"]: r for r in view["variants"]}
        assert rows["a"]["scores"] == 200
        assert rows["a"]["labelled"] == 100
        assert rows["b"]["mean"] == pytest.approx(found.canary)
        assert rows["a"]["vs_control"] is None
        assert rows["b"]["vs_control"]["confidence_sequence"]["low"] > 0
        ppi = rows["b"]["approval_ppi"]
        assert ppi["low"] < 0.8 < ppi["high"]
        # Scores that follow the thumbs: a clear positive correlation.
        assert view["agreement"]["labelled"] == 200
        assert view["agreement"]["point_biserial"] > 0.5

    asyncio.run(go())


def test_point_biserial_needs_both_labels_and_spread() -> None:
    assert point_biserial(LabelledMoments()) is None
    same = LabelledMoments(count=3, labels=3, label_scores=6, scores=6, scores_sq=12)
    assert point_biserial(same) is None  # everyone liked it: nothing to correlate with
    # Scores 1 (down) and 3 (up), perfectly separated.
    sep = LabelledMoments(count=2, labels=1, label_scores=3, scores=4, scores_sq=10)
    assert point_biserial(sep) == pytest.approx(1.0)


def test_plan_yaml_shapes_for_scores() -> None:
    plan = RolloutPlan.model_validate(
        {
            "flag": "bot",
            "control": "a",
            "canary": "b",
            "primary": {"evaluator": "rm"},
            "guardrails": [
                {"metric": "score:rm", "max_decrease": 0.2},
                {"metric": "approval:judge", "max_decrease": 0.05},
                {"metric": "thumbs_down_share"},
            ],
        }
    )
    assert plan.score_primary == ScoreMetric(evaluator="rm")
    assert plan.primary_kind == "thumbs"
    assert [g.score_kind for g in plan.guardrails] == ["score", "approval", None]
    assert plan.guardrails[1].evaluator == "judge"
    for bad in ({"metric": "score:"}, {"metric": "score:a:b"}, {"metric": "rm"}):
        with pytest.raises(ValueError, match="metric"):
            RolloutPlan.model_validate(
                {"flag": "bot", "control": "a", "canary": "b", "guardrails": [bad]}
            )


def _scored_traffic(
    ctl: Controller,
    n: int,
    like: dict[str, float],
    bias: dict[str, float],
    label_share: float,
    seed: int,
) -> None:
    """n answers split by the flag's weights; a judge scores each (quality seen through noise,
    plus a bias per variant); a random label_share of them gets a person's thumbs."""
    flag = ctl.flags.snapshot().flags["bot"]
    weights = {v.name: v.weight for v in flag.variants}
    rng = random.Random(seed)
    for i in range(n):
        variant = "b" if rng.random() * sum(weights.values()) < weights["b"] else "a"
        ctl.counters.count_exchange("bot", flag.version, variant, f"u{seed}-{i}", "ok", 0.1, 0.02)
        liked = rng.random() < like[variant]
        score = 3.0 + 1.0 * liked + bias[variant] + rng.gauss(0.0, 1.0)
        ctl.counters.count_score("bot", flag.version, variant, "judge", VERSION, score)
        if rng.random() < label_share:
            kind = "thumbs_up" if liked else "thumbs_down"
            ctl.counters.count_feedback("bot", flag.version, variant, kind, None)
            ctl.counters.count_labelled_score(
                "bot", flag.version, variant, "judge", VERSION, score, liked
            )


async def _drive(
    ctl: Controller, clock: Clock, like: dict[str, float], bias: dict[str, float], ticks: int
) -> None:
    for t in range(ticks):
        state = await ctl.plans.state("bot")
        if state is not None and state.status != "running":
            return
        _scored_traffic(ctl, 400, like, bias, label_share=0.3, seed=t)
        clock.now += 5
        await ctl.tick()


# People's thumbs as a guardrail on point values: loose, as it must be at 10% of traffic
# where a few dozen thumbs are all the canary has (it catches disasters, not 15 points).
HUMAN_GUARDRAIL = GuardrailSpec(
    metric="thumbs_down_share", max_relative_increase=0.6, absolute_slack=0.15
)


def test_a_better_scoring_canary_is_promoted_on_scores(tmp_path: Path) -> None:
    plan = _plan(
        primary=ScoreMetric(evaluator="judge", min_scores=100, tau=0.25),
        guardrails=(HUMAN_GUARDRAIL,),
        promote_requires_better=True,
    )

    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        # Same human approval; the judge sees the canary 0.4 points better.
        await _drive(ctl, clock, {"a": 0.6, "b": 0.6}, {"a": 0.0, "b": 0.4}, ticks=40)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "promoted", state.last_reasons
        promote = state.history[-1]
        assert promote.action == "promote"
        assert any("score:judge" in r and "canary better" in r for r in promote.reasons)

    _with_controller(tmp_path, plan, scenario)


def test_a_canary_scoring_worse_is_rolled_back_with_the_evaluator_named(tmp_path: Path) -> None:
    plan = _plan(primary=ScoreMetric(evaluator="judge", min_scores=100, tau=0.25))

    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _drive(ctl, clock, {"a": 0.6, "b": 0.6}, {"a": 0.0, "b": -0.5}, ticks=40)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "rolled_back"
        assert any("canary worse on score:judge" in r for r in state.history[-1].reasons)

    _with_controller(tmp_path, plan, scenario)


def test_a_score_guardrail_rolls_back_a_canary_that_scores_worse(tmp_path: Path) -> None:
    plan = _plan(
        guardrails=(GuardrailSpec(metric="score:judge", max_decrease=0.1), HUMAN_GUARDRAIL)
    )

    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        # People like both the same; the judge scores the canary half a point lower.
        await _drive(ctl, clock, {"a": 0.6, "b": 0.6}, {"a": 0.0, "b": -0.6}, ticks=40)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "rolled_back"
        assert any("score:judge breached" in r for r in state.history[-1].reasons)

    _with_controller(tmp_path, plan, scenario)


# A judge biased for the worse candidate: people like b less (0.55 vs 0.70), the judge sees
# that through its noise but adds 1.0 to every answer of b (b's style is the judge's style).
WORSE_BUT_FLATTERED = ({"a": 0.70, "b": 0.55}, {"a": 0.0, "b": 1.0})


@pytest.mark.parametrize("seed_shift", [0, 1000])
def test_a_biased_judge_with_ppi_does_not_promote_the_worse_canary(
    tmp_path: Path, seed_shift: int
) -> None:
    plan = _plan(
        primary=ScoreMetric(evaluator="judge", min_scores=100, tau=0.25),
        guardrails=(GuardrailSpec(metric="approval:judge", max_decrease=0.03), HUMAN_GUARDRAIL),
        min_guardrail_sample=100,
    )
    like, bias = WORSE_BUT_FLATTERED

    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        for t in range(80):
            state = await ctl.plans.state("bot")
            if state is not None and state.status != "running":
                break
            _scored_traffic(ctl, 400, like, bias, label_share=0.3, seed=seed_shift + t)
            clock.now += 5
            await ctl.tick()
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "rolled_back", state.last_reasons
        assert all(h.action != "promote" for h in state.history)
        assert any("approval:judge breached" in r for r in state.history[-1].reasons)

    _with_controller(tmp_path, plan, scenario)


def test_the_same_biased_judge_without_ppi_would_promote_the_worse_canary(
    tmp_path: Path,
) -> None:
    # The control for the test above: scores alone, with the human guardrail's loose margin,
    # are fooled. This is why the approval guardrail (PPI) is there.
    plan = _plan(
        primary=ScoreMetric(evaluator="judge", min_scores=100, tau=0.25),
        guardrails=(HUMAN_GUARDRAIL,),
        min_guardrail_sample=100,
    )
    like, bias = WORSE_BUT_FLATTERED

    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _drive(ctl, clock, like, bias, ticks=40)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "promoted", state.last_reasons

    _with_controller(tmp_path, plan, scenario)


def test_ppi_as_the_primary_metric_rolls_back_the_flattered_canary(tmp_path: Path) -> None:
    plan = _plan(
        primary=ScoreMetric(evaluator="judge", ppi=True, min_labels=50),
        guardrails=(HUMAN_GUARDRAIL,),
        min_guardrail_sample=100,
    )
    like, bias = WORSE_BUT_FLATTERED

    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _drive(ctl, clock, like, bias, ticks=80)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "rolled_back", state.last_reasons
        assert any("canary worse on approval:judge" in r for r in state.history[-1].reasons)

    _with_controller(tmp_path, plan, scenario)


def test_the_running_p_of_a_score_primary_is_not_mixed_into_the_feedback_test() -> None:
    async def go() -> None:
        lookup = lambda key: (1, {"a": 50.0, "b": 50.0}, False)  # noqa: E731
        counters = ExperimentCounters(MemoryCounterBackend(), lookup, clock=lambda: 1.0)
        rng = random.Random(2)
        for i in range(400):
            variant = "a" if i % 2 else "b"
            counters.count_exchange("bot", 1, variant, f"u{i}", "ok", 0.1, 0.02)
            kind = "thumbs_up" if rng.random() < 0.6 else "thumbs_down"
            counters.count_feedback("bot", 1, variant, kind, None)
            counters.count_score("bot", 1, variant, "judge", VERSION, rng.gauss(3.0, 1.0))
        counts = await counters.read("bot")
        plan = _plan(primary=ScoreMetric(evaluator="judge", min_scores=100))
        report = decide(experiment_input(counts, plan, 0, 100.0, previous_p_value=1e-9))
        assert report.p_value == 1e-9  # the score test's running minimum
        feedback = report.variants[1].sequential
        assert feedback is not None
        assert feedback.p_value > 0.01  # thumbs alike: the feedback test's own p

    asyncio.run(go())
