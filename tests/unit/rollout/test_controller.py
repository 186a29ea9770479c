"""The controller against a real file flag store and memory counters, on a simulated clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from rollout.controller import Controller, run_controller
from rollout.counters import ExperimentCounters
from rollout.plan import BanditConfig, GuardrailSpec, RolloutPlan
from rollout.stores.counters import MemoryCounterBackend
from rollout.stores.lock import RedisLock
from rollout.stores.plans import FilePlanStore, MemoryPlanStore, RedisPlanStore
from router.stores.base import AuditRecord
from router.stores.file import FileFlagStore

FLAGS = {
    "flags": {
        "bot": {
            "control": "a",
            "variants": [
                {"name": "a", "pool": "pa", "weight": 100},
                {"name": "b", "pool": "pb", "weight": 0},
            ],
        }
    }
}


def _plan(**changes: Any) -> RolloutPlan:
    base: dict[str, Any] = {
        "flag": "bot", "control": "a", "canary": "b", "steps": (10, 50, 100),
        "min_duration_s": 10, "min_exposures": 50, "min_feedback": 60, "min_outcomes": 5,
        "min_guardrail_sample": 30, "tau": 0.1,
        "guardrails": (GuardrailSpec(metric="error_rate", absolute_slack=0.02),
                       GuardrailSpec(metric="thumbs_down_share", max_relative_increase=0.3,
                                     absolute_slack=0.05)),
    }  # fmt: skip
    return RolloutPlan(**{**base, **changes})


class Clock:
    """Simulated time."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


Scenario = Callable[[Controller, Clock, list[AuditRecord]], Awaitable[None]]


def _with_controller(tmp_path: Path, plan: RolloutPlan, scenario: Scenario) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump(FLAGS))
    audits: list[AuditRecord] = []

    async def go() -> None:
        async with FileFlagStore.open(path, {"pa", "pb"}, audits.append) as store:
            clock = Clock()
            counters = ExperimentCounters(MemoryCounterBackend(), clock=clock)
            plans = MemoryPlanStore()
            await plans.put_plan(plan)
            await scenario(Controller(store, counters, plans, clock=clock), clock, audits)

    asyncio.run(go())


def _traffic(
    ctl: Controller, n: int, like: dict[str, float], errors: float = 0.0, seed: int = 1
) -> None:
    """n requests split by the flag's current weights, each judged by thumbs."""
    flag = ctl.flags.snapshot().flags["bot"]
    weights = {v.name: v.weight for v in flag.variants}
    rng = random.Random(seed)
    for i in range(n):
        variant = "b" if rng.random() * sum(weights.values()) < weights["b"] else "a"
        status = "error" if variant == "b" and rng.random() < errors else "ok"
        ctl.counters.count_exchange("bot", flag.version, variant, f"u{i}", status, 0.1, 0.02)
        if status == "ok":
            kind = "thumbs_up" if rng.random() < like[variant] else "thumbs_down"
            ctl.counters.count_feedback("bot", flag.version, variant, kind, None)


async def _run(ctl: Controller, clock: Clock, like: dict[str, float], ticks: int,
               errors: float = 0.0) -> None:  # fmt: skip
    for t in range(ticks):
        state = await ctl.plans.state("bot")
        if state is not None and state.status != "running":
            return
        _traffic(ctl, 400, like, errors, seed=t)
        clock.now += 5
        await ctl.tick()


def test_better_canary_walks_every_step_then_is_promoted(tmp_path: Path) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _run(ctl, clock, {"a": 0.6, "b": 0.8}, ticks=40)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "promoted"
        assert [h.action for h in state.history] == ["start", "advance", "promote"]
        flag = await ctl.flags.get("bot")
        assert flag is not None
        assert flag.variant("b").weight == 100
        assert [a.who for a in audits] == ["controller"] * 3
        assert [a.after.variant("b").weight for a in audits if a.after] == [10, 50, 100]

    _with_controller(tmp_path, _plan(), scenario)


def test_no_advance_before_the_minimum_time_and_sample(tmp_path: Path) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await ctl.tick()  # start at 10%
        _traffic(ctl, 100, {"a": 0.6, "b": 0.6})
        clock.now += 5
        await ctl.tick()
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.step == 0
        assert state.last_decision == "insufficient_data"
        assert any("need 10 s" in r for r in state.last_reasons)

    _with_controller(tmp_path, _plan(), scenario)


def test_worse_canary_is_rolled_back_with_the_reason(tmp_path: Path) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _run(ctl, clock, {"a": 0.7, "b": 0.4}, ticks=20)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "rolled_back"
        assert state.history[-1].action == "rollback"
        assert "thumbs_down_share breached" in " ".join(state.history[-1].reasons)
        flag = await ctl.flags.get("bot")
        assert flag is not None
        assert flag.variant("b").weight == 0

    _with_controller(tmp_path, _plan(), scenario)


def test_erroring_canary_is_killed_when_the_plan_says_kill(tmp_path: Path) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _run(ctl, clock, {"a": 0.6, "b": 0.6}, ticks=20, errors=0.3)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "rolled_back"
        assert "error_rate breached" in " ".join(state.history[-1].reasons)
        assert audits[-1].action == "kill"
        flag = await ctl.flags.get("bot")
        assert flag is not None
        assert flag.killed

    _with_controller(tmp_path, _plan(rollback="kill"), scenario)


def test_a_hand_edit_pauses_the_rollout(tmp_path: Path) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await ctl.tick()
        flag = await ctl.flags.get("bot")
        assert flag is not None
        await ctl.flags.put(flag.with_weights({"a": 70, "b": 30}), flag.version, who="alice")
        await ctl.tick()
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "paused"
        assert "outside the controller" in state.last_reasons[0]
        await ctl.tick()
        after = await ctl.flags.get("bot")
        assert after is not None
        assert after.variant("b").weight == 30

    _with_controller(tmp_path, _plan(), scenario)


def test_a_pause_made_while_a_tick_decides_is_not_overwritten(tmp_path: Path) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await ctl.tick()  # start
        decide = ctl.report

        async def report_then_someone_pauses(plan: RolloutPlan, state: Any) -> Any:
            found = await decide(plan, state)
            stored = await ctl.plans.state("bot")
            assert stored is not None
            await ctl.plans.put_state(stored.model_copy(update={"status": "paused"}))
            return found

        ctl.report = report_then_someone_pauses  # type: ignore[method-assign]
        clock.now += 5
        await ctl.tick()  # too early to act: a hold, written back unless paused meanwhile
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "paused"

    _with_controller(tmp_path, _plan(), scenario)


def test_bandit_moves_traffic_toward_the_better_arm_above_the_floor(tmp_path: Path) -> None:
    async def scenario(ctl: Controller, clock: Clock, audits: list[AuditRecord]) -> None:
        await _run(ctl, clock, {"a": 0.5, "b": 0.8}, ticks=6)
        state = await ctl.plans.state("bot")
        assert state is not None
        assert state.status == "running"
        assert any(h.action == "allocate" for h in state.history)
        assert state.share is not None
        assert 50 < state.share <= 90

    plan = _plan(bandit=BanditConfig(floor=0.1), min_feedback=20)
    _with_controller(tmp_path, plan, scenario)


def test_file_plan_store_survives_a_restart(tmp_path: Path) -> None:
    async def go() -> None:
        store = FilePlanStore(tmp_path / "rollout.json")
        await store.put_plan(_plan())
        from rollout.plan import RolloutState

        await store.put_state(RolloutState(flag="bot", step=1, share=50.0))
        again = FilePlanStore(tmp_path / "rollout.json")
        assert await again.plan("bot") == _plan()
        state = await again.state("bot")
        assert state is not None
        assert state.share == 50.0

    asyncio.run(go())


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="ascend"):
        _plan(steps=(10, 5, 100))
    with pytest.raises(ValueError, match="100"):
        _plan(steps=(10, 50))
    assert _plan().policy(1).last_step
    assert not _plan().policy(0).last_step


def test_redis_plan_store_round_trip(redis_url: str, redis_namespace: str) -> None:
    async def go() -> None:
        store = RedisPlanStore(redis_url, redis_namespace)
        await store.put_plan(_plan())
        assert [p.flag for p in await store.plans()] == ["bot"]
        assert await store.plan("bot") == _plan()
        await store.delete_plan("bot")
        assert await store.plans() == []
        await store.aclose()

    asyncio.run(go())


def test_redis_lock_one_holder_and_takeover_after_expiry(
    redis_url: str, redis_namespace: str
) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        key = f"{redis_namespace}:rollout:lock"
        first = RedisLock(client, key, ttl_s=0.5, holder="one")
        second = RedisLock(client, key, ttl_s=0.5, holder="two")
        assert await first.hold()
        assert not await second.hold()
        assert await first.hold()  # renewal
        await asyncio.sleep(0.7)  # first died without releasing
        assert await second.hold()
        assert not await first.hold()  # it must notice it lost the lock
        await second.release()
        assert await first.hold()
        await first.release()
        await client.aclose()

    asyncio.run(go())


class _CountingController:
    """Stands in for a Controller: counts ticks."""

    def __init__(self) -> None:
        self.ticks = 0
        self.metrics = None

    async def tick(self) -> list[Any]:
        self.ticks += 1
        return []


def test_two_controllers_one_acts_and_the_other_takes_over(
    redis_url: str, redis_namespace: str
) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        key = f"{redis_namespace}:rollout:lock"
        one, two = _CountingController(), _CountingController()
        stop_one, stop_two = asyncio.Event(), asyncio.Event()
        lock_one = RedisLock(client, key, ttl_s=0.6, holder="one")
        lock_two = RedisLock(client, key, ttl_s=0.6, holder="two")
        run_one = asyncio.create_task(
            run_controller(one, 0.1, lock_one, renew_every=0.2, stop=stop_one)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.15)
        run_two = asyncio.create_task(
            run_controller(two, 0.1, lock_two, renew_every=0.2, stop=stop_two)  # type: ignore[arg-type]
        )
        await asyncio.sleep(1.0)
        assert one.ticks > 0
        assert two.ticks == 0
        stop_one.set()  # the leader exits and releases: the other takes over
        await run_one
        await asyncio.sleep(0.6)
        assert two.ticks > 0
        stop_two.set()
        await run_two
        await client.aclose()

    asyncio.run(go())
