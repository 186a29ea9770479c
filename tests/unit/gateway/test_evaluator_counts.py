"""Evaluators count scores of exposures and join the first thumbs to them (no pool called:
the scoring call is the integration tests'; here a finished score is handed in directly)."""

from __future__ import annotations

import asyncio
from typing import Any

from feedback.schema import FeedbackBody
from gateway.config import EvaluatorConfig
from gateway.evaluators import EvaluatorMetrics, Evaluators, Job, _Scorer
from rollout.counters import ExperimentCounters
from rollout.scores import labelled_of, moments_of
from rollout.stores.counters import MemoryCounterBackend

CONFIG = EvaluatorConfig(kind="reward_model", pool="rm")


def _job(response_id: str, *, split: bool = True, variant: str = "a") -> Job:
    return Job(response_id, "bot", 1, variant, "app", {}, "hi", "", split=split)


def _evaluators(counters: ExperimentCounters, max_remembered: int = 100) -> Evaluators:
    upstreams: Any = None  # no evaluator configured: nothing reads the pools
    return Evaluators(
        {}, upstreams, None, EvaluatorMetrics(None), "gw", counters=counters,
        max_remembered=max_remembered,
    )  # fmt: skip


def _thumbs(response_id: str, kind: str) -> FeedbackBody:
    return FeedbackBody(response_id=response_id, kind=kind, flag="bot", variant="a", app="app")


def test_scores_of_exposures_are_counted_and_the_first_thumbs_joins_them() -> None:
    async def go() -> None:
        lookup = lambda key: (1, {"a": 100.0}, False)  # noqa: E731
        counters = ExperimentCounters(MemoryCounterBackend(), lookup, clock=lambda: 1.0)
        evaluators = _evaluators(counters)
        scorer = _Scorer("rm", CONFIG, "rm-model", 0.0)
        evaluators._remember(_job("r1"), scorer, 2.0)
        evaluators._remember(_job("r2"), scorer, -1.0)
        evaluators._remember(_job("qa", split=False), scorer, 9.0)  # forced or shadow: not
        evaluators.feedback_received(_thumbs("r1", "thumbs_up"))
        evaluators.feedback_received(_thumbs("r1", "thumbs_down"))  # a second click: not again
        evaluators.feedback_received(_thumbs("r2", "edit"))  # not a label
        evaluators.feedback_received(_thumbs("unknown", "thumbs_up"))  # never scored here
        counts = await counters.read("bot")
        tally = counts.tallies[(1, "a")]
        scored = moments_of(tally, "rm", scorer.version)
        assert (scored.count, scored.total, scored.total_sq) == (2, 1.0, 5.0)
        labelled = labelled_of(tally, "rm", scorer.version)
        assert labelled.count == 1
        assert (labelled.labels, labelled.label_scores, labelled.scores) == (1.0, 2.0, 2.0)

    asyncio.run(go())


def test_remembered_scores_are_bounded_oldest_first() -> None:
    async def go() -> None:
        counters = ExperimentCounters(MemoryCounterBackend(), clock=lambda: 1.0)
        evaluators = _evaluators(counters, max_remembered=3)
        scorer = _Scorer("rm", CONFIG, "rm-model", 0.0)
        for i in range(5):
            evaluators._remember(_job(f"r{i}"), scorer, float(i))
        assert list(evaluators.remembered) == ["r2", "r3", "r4"]
        assert evaluators.forgotten == 2
        evaluators.feedback_received(_thumbs("r0", "thumbs_up"))  # pushed out: not joined
        counts = await counters.read("bot")
        assert labelled_of(counts.tallies[(1, "a")], "rm", scorer.version).count == 0

    asyncio.run(go())
