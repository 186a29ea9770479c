"""Preference counts, the shadow gate's verdict, and the controller's shadow stage.

The controller scenarios run against a real file flag store and real Redis counters, on a
simulated clock, with seeded judged pairs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.controller import Controller
from rollout.counters import (
    ExperimentCounters,
    preference_pairs,
    preferences,
)
from rollout.plan import RolloutPlan, ShadowGate
from rollout.service import flag_lookup
from rollout.shadow_gate import check_shadow_gate, pair_counts, shadow_view
from rollout.stores.counters import MemoryCounterBackend, RedisCounterBackend
from rollout.stores.plans import MemoryPlanStore
from rollout.winrate import PreferenceCounts
from router.stores.base import AuditRecord
from router.stores.file import FileFlagStore


def _lookup(key: str) -> tuple[int, dict[str, float], bool] | None:
    return (1, {"a": 100.0, "b": 0.0, "c": 0.0}, False) if key == "bot" else None


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_pair_counts_the_same_whichever_answer_was_a(
    backend: str, redis_url: str, redis_namespace: str
) -> None:
    async def go() -> None:
        store = (
            RedisCounterBackend(redis_url, redis_namespace, 60)
            if backend == "redis"
            else MemoryCounterBackend()
        )
        counters = ExperimentCounters(store, _lookup, clock=lambda: 1.0)
        counters.count_preference("bot", 1, "b", "a", "a")  # b won
        counters.count_preference("bot", 1, "a", "b", "b")  # b won
        counters.count_preference("bot", 1, "a", "b", "a")  # a won
        counters.count_preference("bot", 1, "b", "a", "tie")
        counters.count_preference("bot", 1, "a", "b", "both_bad")
        counters.count_preference("bot", 1, "c", "a", "a")  # c won against a
        counters.count_preference("bot", 1, "a", "a", "a")  # one variant: not a comparison
        counts = await counters.read("bot")
        assert preference_pairs(counts) == [("a", "b"), ("a", "c")]
        b_vs_a = preferences(counts, "b", "a")
        assert b_vs_a == {"win": 2, "loss": 1, "tie": 1, "both_bad": 1}
        assert preferences(counts, "a", "b") == {"win": 1, "loss": 2, "tie": 1, "both_bad": 1}
        assert preferences(counts, "c", "a") == {"win": 1, "loss": 0, "tie": 0, "both_bad": 0}
        view = shadow_view(counts, control="a")
        assert [(p["candidate"], p["baseline"], p["pairs"]) for p in view["pairs"]] == [
            ("b", "a", 5),
            ("c", "a", 1),
        ]
        assert view["pairs"][0]["win_rate"]["estimate"] == pytest.approx(0.6)
        await store.aclose()

    asyncio.run(go())


def _gate_counts(wins: int, losses: int, ties: int = 0) -> PreferenceCounts:
    return PreferenceCounts(candidate="b", baseline="a", wins=wins, losses=losses, ties=ties)


def test_the_gate_waits_for_min_pairs_then_passes_or_fails_on_the_bounds() -> None:
    gate = ShadowGate(min_pairs=200, min_win_rate=0.45)
    early = check_shadow_gate(gate, _gate_counts(150, 10))
    assert early.status == "pending"
    assert "160 of 200 judged pairs" in early.reasons[0]
    good = check_shadow_gate(gate, _gate_counts(130, 60, 10))
    assert good.status == "pass", good.reasons
    assert good.win_rate is not None
    assert good.win_rate.confidence_sequence.low >= 0.45
    bad = check_shadow_gate(gate, _gate_counts(50, 150))
    assert bad.status == "fail"
    assert "upper bound" in bad.reasons[0]
    assert "worse" in bad.reasons[0]
    close = check_shadow_gate(gate, _gate_counts(100, 100))
    assert close.status == "pending"
    assert "not decided yet" in close.reasons[0]
    capped = check_shadow_gate(ShadowGate(min_pairs=200, max_pairs=200), _gate_counts(100, 100))
    assert capped.status == "fail"
    assert "max_pairs 200" in capped.reasons[0]
    assert "b vs a: win rate 50.0%" in capped.reasons[1]
    with pytest.raises(ValueError, match="max_pairs"):
        ShadowGate(min_pairs=200, max_pairs=100)


FLAGS: dict[str, Any] = {
    "flags": {
        "bot": {
            "control": "a",
            "variants": [
                {"name": "a", "pool": "pa", "weight": 100},
                {"name": "b", "pool": "pb", "weight": 0},
            ],
            "shadow": {"variant": "b", "share": 0.1},
        }
    }
}


def _plan(**changes: Any) -> RolloutPlan:
    base: dict[str, Any] = {
        "flag": "bot", "control": "a", "canary": "b", "steps": (10, 50, 100),
        "min_duration_s": 10, "min_exposures": 50, "min_feedback": 60, "min_outcomes": 5,
        "min_guardrail_sample": 30, "tau": 0.1,
        "shadow_gate": ShadowGate(min_pairs=100, min_win_rate=0.45),
    }  # fmt: skip
    return RolloutPlan(**{**base, **changes})


class Clock:
    """Simulated time."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


Scenario = Callable[[Controller, Clock, list[AuditRecord]], Awaitable[None]]


def _with_controller(
    tmp_path: Path,
    plan: RolloutPlan,
    scenario: Scenario,
    redis_url: str,
    namespace: str,
    flags: dict[str, Any] = FLAGS,
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump(flags))
    audits: list[AuditRecord] = []

    async def go() -> None:
        async with FileFlagStore.open(path, {"pa", "pb"}, audits.append) as store:
            clock = Clock()
            backend = RedisCounterBackend(redis_url, namespace, 600)
            counters = ExperimentCounters(backend, flag_lookup(store), clock=clock)
            plans = MemoryPlanStore()
            await plans.put_plan(plan)
            try:
                await scenario(Controller(store, counters, plans, clock=clock), clock, audits)
            finally:
                await backend.aclose()

    asyncio.run(go())


def _judged_pairs(ctl: Controller, n: int, win: float, tie: float, seed: int) -> None:
    """n shadow pairs judged: the candidate wins with `win`, ties with `tie`; A/B shown in a
    random order, as a judge swaps positions."""
    flag = ctl.flags.snapshot().flags["bot"]
    rng = random.Random(seed)
    for _ in range(n):
        x = rng.random()
        outcome = "win" if x < win else "tie" if x < win + tie else "loss"
        if rng.random() < 0.5:  # A is the primary (control), B the shadow (candidate)
            winner = {"win": "b", "loss": "a", "tie": "tie"}[outcome]
            ctl.counters.count_preference("bot", flag.version, "a", "b", winner)
        else:
            winner = {"win": "a", "loss": "b", "tie": "tie"}[outcome]
            ctl.counters.count_preference("bot", flag.version, "b", "a", winner)


async def _run(ctl: Controller, clock: Clock, win: float, tie: float, ticks: int) -> None:
    for t in range(ticks):
        state = await ctl.plans.state("bot")
        if state is not None and (state.status != "running" or state.step >= 0):
            return
        _judged_pairs(ctl, 20, win, tie, seed=t)
        clock.now += 60
        await ctl.tick()


def test_a_worse_candidate_in_shadow_never_gets_a_canary_and_the_plan_says_why(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _run(ctl, clock, win=0.3, tie=0.1, ticks=50)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "rolled_back"
        assert state.step == -1
        assert [h.action for h in state.history] == ["hold", "rollback"]
        failed = state.history[-1]
        assert failed.decision == "rollback"
        assert failed.reasons[0].startswith("shadow gate failed: upper bound")
        assert "b vs a: win rate" in failed.reasons[1]
        flag = await ctl.flags.get("bot")
        assert flag is not None
        assert flag.variant("b").weight == 0
        assert audits == []  # the canary was at 0% throughout: nothing to write

    _with_controller(tmp_path, _plan(), scenario, redis_url, redis_namespace)


def test_a_better_candidate_passes_the_gate_and_the_ladder_begins(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _run(ctl, clock, win=0.65, tie=0.1, ticks=50)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "running"
        assert state.step == 0
        assert [h.action for h in state.history] == ["hold", "start"]
        hold, start = state.history
        assert hold.to_share == 0.0
        assert hold.reasons[0] == "shadow gate: 20 of 100 judged pairs; holding the canary at 0%"
        assert state.last_decision == "advance"
        assert start.reasons[0].startswith("shadow gate passed: lower bound")
        flag = await ctl.flags.get("bot")
        assert flag is not None
        assert flag.variant("b").weight == 10
        assert [a.who for a in audits] == ["controller"]

    _with_controller(tmp_path, _plan(), scenario, redis_url, redis_namespace)


def test_a_canary_already_serving_is_pinned_to_0_and_a_missing_shadow_is_named(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    flags = yaml.safe_load(yaml.safe_dump(FLAGS))
    bot = flags["flags"]["bot"]
    bot["variants"][0]["weight"], bot["variants"][1]["weight"] = 80, 20
    del bot["shadow"]

    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await ctl.tick()
        clock.now += 60
        await ctl.tick()
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "running"
        assert state.step == -1
        assert state.share == 0.0
        assert [h.action for h in state.history] == ["hold"]
        assert state.history[0].from_share == 20.0
        assert state.last_decision == "hold"
        assert "no shadow of 'b'" in state.last_reasons[-1]
        flag = await ctl.flags.get("bot")
        assert flag is not None
        assert flag.variant("b").weight == 0
        assert len(audits) == 1

    _with_controller(tmp_path, _plan(), scenario, redis_url, redis_namespace, flags)


def test_without_a_gate_the_plan_starts_at_once(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await ctl.tick()
        state = await ctl.plans.state("bot")
        assert state is not None
        assert [h.action for h in state.history] == ["start"]
        assert state.share == 10

    _with_controller(tmp_path, _plan(shadow_gate=None), scenario, redis_url, redis_namespace)


def test_pair_counts_read_every_version(redis_url: str, redis_namespace: str) -> None:
    async def go() -> None:
        backend = MemoryCounterBackend()
        counters = ExperimentCounters(backend, None)
        for version in (1, 2):
            counters.register_version("bot", version, {"a": 100.0, "b": 0.0}, False, 1.0)
            counters.count_preference("bot", version, "a", "b", "b")
        counts = await counters.read("bot")
        assert pair_counts(counts, "b", "a").wins == 2

    asyncio.run(go())
