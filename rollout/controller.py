"""The rollout controller: each interval, per flag with a plan, read counts, decide, act.

Advance one step when the decision says so, hold otherwise, roll back (weight 0 or kill) on a
breached guardrail or a canary shown worse, promote to 100% at the last step. Every change goes
through the flag store's `put(..., who="controller")`, which writes the audit event; the why
goes into the rollout state's history and a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, get_args

from rollout.bandit import thompson_allocation
from rollout.counters import ExperimentCounters
from rollout.decision import decide
from rollout.model import Decision, ExperimentReport
from rollout.plan import ActionKind, RolloutAction, RolloutPlan, RolloutState, RolloutStatus
from rollout.readout import experiment_input, phases
from rollout.shadow_gate import check_shadow_gate, pair_counts
from rollout.stores.lock import Leadership
from rollout.stores.plans import PlanStore
from router.errors import ConflictError, StoreUnavailable
from router.model import Flag
from router.stores.base import FlagStore

log = logging.getLogger("loopgate.controller")


# The gate's verdict as the decision the controller reports and counts.
_GATE_DECISION: dict[str, Decision] = {"pending": "hold", "pass": "advance", "fail": "rollback"}


class ControllerMetrics:
    """Prometheus collectors of the controller (labels: flag, action or decision)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.actions = Counter(
            "loopgate_rollout_actions_total",
            "Rollout actions taken by the controller.",
            ("flag", "action"),
            registry=registry,
        )
        self.decisions = Counter(
            "loopgate_rollout_decisions_total",
            "Rollout decisions computed by the controller, one per flag per interval.",
            ("flag", "decision"),
            registry=registry,
        )
        self.share = Gauge(
            "loopgate_rollout_canary_share",
            "The canary's share of split traffic (a 0-1 ratio) as last written.",
            ("flag",),
            registry=registry,
        )
        self.status = Gauge(
            "loopgate_rollout_status",
            "1 for the rollout's current status (running, paused, promoted, rolled_back).",
            ("flag", "status"),
            registry=registry,
        )
        self.leader = Gauge(
            "loopgate_controller_leader",
            "1 while this controller holds the lock.",
            registry=registry,
        )
        self._known: set[str] = set()

    def know(self, flag: str) -> None:
        """Every action and decision series of a planned flag, at 0 until it first happens.

        Without them `increase(...{action="rollback"}[10m])` misses the first rollback: the
        series would start at 1.
        """
        if flag in self._known:
            return
        self._known.add(flag)
        for action in get_args(ActionKind):
            self.actions.labels(flag, action)
        for decision in get_args(Decision):
            self.decisions.labels(flag, decision)

    def show_status(self, flag: str, status: str) -> None:
        """The status series of a flag: 1 for `status`, 0 for the others."""
        for name in get_args(RolloutStatus):
            self.status.labels(flag, name).set(1 if name == status else 0)


def canary_share(flag: Flag, plan: RolloutPlan) -> float:
    """The canary's share (percent) of the flag's weights; 0 under the kill switch."""
    total = sum(v.weight for v in flag.variants)
    if flag.killed or total <= 0 or not flag.has_variant(plan.canary):
        return 0.0
    return 100.0 * flag.variant(plan.canary).weight / total


class Controller:
    """One pass over every plan per `tick()`; stateless between ticks but for the stores."""

    def __init__(
        self,
        flags: FlagStore,
        counters: ExperimentCounters,
        plans: PlanStore,
        *,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        who: str = "controller",
    ) -> None:
        self.flags = flags
        self.counters = counters
        self.plans = plans
        self.metrics = metrics
        self.clock = clock
        self.who = who
        self.ticks = 0

    async def tick(self) -> list[RolloutAction]:
        """Look at every plan once; returns the actions taken."""
        self.ticks += 1
        taken = []
        for plan in await self.plans.plans():
            if self.metrics is not None:
                self.metrics.know(plan.flag)
            try:
                action = await self.step(plan)
            except (ConflictError, StoreUnavailable) as exc:
                # Someone wrote the flag meanwhile, or the store is away: try again next tick.
                log.warning("rollout %s: %s; retrying next interval", plan.flag, exc)
                continue
            except Exception:  # the edge: one bad plan must not stop the others
                log.exception("rollout %s: step failed", plan.flag)
                continue
            if action is not None:
                taken.append(action)
        return taken

    async def report(self, plan: RolloutPlan, state: RolloutState | None) -> ExperimentReport:
        """The decision report for a plan now (no action taken)."""
        counts = await self.counters.read(plan.flag)
        step = state.step if state else 0
        p = state.p_value if state else 1.0
        return decide(experiment_input(counts, plan, step, self.clock(), p))

    async def step(self, plan: RolloutPlan) -> RolloutAction | None:
        """Decide and act for one plan."""
        now = self.clock()
        state = await self.plans.state(plan.flag) or RolloutState(flag=plan.flag)
        if self.metrics is not None:
            self.metrics.show_status(plan.flag, state.status)
        if state.status != "running":
            return None
        flag = await self.flags.get(plan.flag)
        if flag is None or not (flag.has_variant(plan.canary) and flag.has_variant(plan.control)):
            reason = f"flag {plan.flag!r} or its variants {plan.control}/{plan.canary} not found"
            await self.plans.put_state(state.model_copy(update={"last_reasons": (reason,)}))
            return None
        if state.step < 0 and plan.shadow_gate is not None:
            return await self._shadow_stage(plan, state, flag, now)
        if state.step < 0:
            return await self._set_share(plan, state, flag, 0, "start", None, ("rollout started",))
        if state.share is not None and abs(canary_share(flag, plan) - state.share) > 0.01:
            return await self._pause(plan, state, now, flag)
        report = await self.report(plan, state)
        if self.metrics is not None:
            self.metrics.decisions.labels(plan.flag, report.decision).inc()
        state = state.model_copy(
            update={
                "p_value": report.p_value,
                "last_decision": report.decision,
                "last_reasons": tuple(report.reasons),
                "checked_at": now,
            }
        )
        if report.decision == "rollback":
            return await self._rollback(plan, state, flag, report)
        if plan.bandit is not None:
            return await self._allocate(plan, state, flag, report)
        if report.decision == "advance":
            nxt = min(state.step + 1, len(plan.steps) - 1)
            return await self._set_share(plan, state, flag, nxt, "advance", report)
        if report.decision == "promote":
            last = len(plan.steps) - 1
            return await self._set_share(plan, state, flag, last, "promote", report)
        # A person may have paused or aborted while this tick decided: keep their state.
        now_stored = await self.plans.state(plan.flag)
        if now_stored is not None and now_stored.status != "running":
            return None
        await self.plans.put_state(state)
        return None

    async def _write(self, flag: Flag, new: Flag, action: Any) -> Flag:
        stored = await self.flags.put(new, flag.version, who=self.who, action=action)
        weights = {v.name: v.weight for v in stored.variants}
        # The new phase starts now, not when the first request of it is counted.
        self.counters.register_version(
            stored.key, stored.version, weights, stored.killed, self.clock()
        )
        return stored

    async def _record(
        self, plan: RolloutPlan, state: RolloutState, action: RolloutAction
    ) -> RolloutAction:
        await self.plans.put_state(state.with_action(action))
        log.info(
            "rollout %s: %s %s -> %s (%s)",
            plan.flag,
            action.action,
            action.from_share,
            action.to_share,
            "; ".join(action.reasons),
        )
        if self.metrics is not None:
            self.metrics.show_status(plan.flag, state.status)
            self.metrics.actions.labels(plan.flag, action.action).inc()
            if action.to_share is not None:
                self.metrics.share.labels(plan.flag).set(action.to_share / 100.0)
        return action

    async def _set_share(
        self,
        plan: RolloutPlan,
        state: RolloutState,
        flag: Flag,
        step: int,
        kind: ActionKind,
        report: ExperimentReport | None,
        reasons: tuple[str, ...] = (),
        share: float | None = None,
    ) -> RolloutAction:
        now = self.clock()
        to_share = plan.steps[step] if share is None else share
        weights = {v.name: 0.0 for v in flag.variants} | plan.weights(to_share)
        stored = await self._write(flag, flag.with_weights(weights), "set_weights")
        action = RolloutAction(
            time=now,
            action=kind,
            decision=report.decision if report else None,
            from_share=canary_share(flag, plan),
            to_share=to_share,
            flag_version=stored.version,
            p_value=report.p_value if report else None,
            reasons=reasons or tuple(report.reasons if report else ()),
        )
        state = state.model_copy(
            update={
                "step": step,
                "step_started_at": now,
                "share": to_share,
                "flag_version": stored.version,
                "status": "promoted" if kind == "promote" else "running",
            }
        )
        return await self._record(plan, state, action)

    async def _rollback(
        self, plan: RolloutPlan, state: RolloutState, flag: Flag, report: ExperimentReport
    ) -> RolloutAction:
        return await self._roll_back(
            plan, state, flag, self.clock(), tuple(report.reasons), report.p_value
        )

    async def _roll_back(
        self,
        plan: RolloutPlan,
        state: RolloutState,
        flag: Flag,
        now: float,
        reasons: tuple[str, ...],
        p_value: float | None = None,
    ) -> RolloutAction:
        """The canary to 0% (or the kill switch), recorded with its reasons; a flag that has
        the rollback's weights already (a failed shadow gate, say) is not written again."""
        weights = {v.name: 0.0 for v in flag.variants} | plan.weights(0.0)
        if plan.rollback == "kill":
            stored = await self._write(flag, flag.replace(killed=True), "kill")
        elif any(v.weight != weights[v.name] for v in flag.variants):
            stored = await self._write(flag, flag.with_weights(weights), "set_weights")
        else:
            stored = flag
        action = RolloutAction(
            time=now,
            action="rollback",
            decision="rollback",
            from_share=canary_share(flag, plan),
            to_share=0.0,
            flag_version=stored.version,
            p_value=p_value,
            reasons=reasons,
        )
        state = state.model_copy(
            update={
                "status": "rolled_back",
                "share": 0.0,
                "step_started_at": now,
                "flag_version": stored.version,
            }
        )
        return await self._record(plan, state, action)

    async def _pause(
        self, plan: RolloutPlan, state: RolloutState, now: float, flag: Flag
    ) -> RolloutAction:
        # A person changed the weights (or pulled the kill switch): theirs wins, the
        # controller stops until the plan is put again.
        reason = (
            f"weights changed outside the controller: canary at {canary_share(flag, plan):.4g}%, "
            f"expected {state.share:.4g}%; paused"
        )
        action = RolloutAction(
            time=now,
            action="hold",
            from_share=state.share,
            to_share=canary_share(flag, plan),
            flag_version=flag.version,
            reasons=(reason,),
        )
        paused = state.model_copy(update={"status": "paused", "last_reasons": (reason,)})
        return await self._record(plan, paused, action)

    async def _allocate(
        self, plan: RolloutPlan, state: RolloutState, flag: Flag, report: ExperimentReport
    ) -> RolloutAction | None:
        assert plan.bandit is not None
        counts = await self.counters.read(plan.flag)
        pos = {plan.control: 0, plan.canary: 0}
        neg = dict(pos)
        for phase in phases(counts, plan.primary_kind):
            for name in pos:
                pos[name] += phase.of(name).positive
                neg[name] += phase.of(name).negative
        if min(min(pos.values()), min(neg.values())) < plan.min_outcomes:
            await self.plans.put_state(state)
            return None
        shares = thompson_allocation(
            {name: (pos[name], neg[name]) for name in pos},
            seed=plan.bandit.seed + state.allocations,
            floor=plan.bandit.floor,
        )
        target = round(100.0 * shares[plan.canary], 1)
        current = state.share if state.share is not None else canary_share(flag, plan)
        state = state.model_copy(update={"allocations": state.allocations + 1})
        if abs(target - current) < plan.bandit.min_change:
            await self.plans.put_state(state)
            return None
        reason = (
            f"Thompson sampling: P(canary best) gives {target:.1f}% "
            f"(floor {100 * plan.bandit.floor:.0f}%)"
        )
        return await self._set_share(
            plan, state, flag, state.step, "allocate", report, (reason,), share=target
        )

    async def _shadow_stage(
        self, plan: RolloutPlan, state: RolloutState, flag: Flag, now: float
    ) -> RolloutAction | None:
        """Before the first step: hold the canary at 0% until the shadow gate passes; start the
        ladder when it does, roll the plan back when it fails (rollout/shadow_gate.py)."""
        assert plan.shadow_gate is not None
        if state.share is not None and abs(canary_share(flag, plan) - state.share) > 0.01:
            return await self._pause(plan, state, now, flag)
        counts = await self.counters.read(plan.flag)
        verdict = check_shadow_gate(
            plan.shadow_gate, pair_counts(counts, plan.canary, plan.control), plan.alpha, plan.tau
        )
        reasons = verdict.reasons
        if verdict.status == "pending" and (
            flag.shadow is None or flag.shadow.variant != plan.canary or flag.killed
        ):
            # Reviewers may still compare primaries, but no shadow pairs will come: say so.
            why = "the kill switch is on" if flag.killed else f"no shadow of {plan.canary!r}"
            reasons = (*reasons, f"{why}: no shadow pairs are being made for the gate")
        decision = _GATE_DECISION[verdict.status]
        if self.metrics is not None:
            self.metrics.decisions.labels(plan.flag, decision).inc()
        state = state.model_copy(
            update={"last_decision": decision, "last_reasons": reasons, "checked_at": now}
        )
        if verdict.status == "pass":
            return await self._set_share(plan, state, flag, 0, "start", None, reasons)
        if verdict.status == "fail":
            return await self._roll_back(plan, state, flag, now, reasons)
        if canary_share(flag, plan) > 0.01 or state.share is None:
            # The first look (or a canary already serving): pin it at 0% and say why.
            weights = {v.name: 0.0 for v in flag.variants} | plan.weights(0.0)
            stored = flag
            if canary_share(flag, plan) > 0.01:
                stored = await self._write(flag, flag.with_weights(weights), "set_weights")
            action = RolloutAction(
                time=now,
                action="hold",
                decision="hold",
                from_share=canary_share(flag, plan),
                to_share=0.0,
                flag_version=stored.version,
                reasons=reasons,
            )
            held = state.model_copy(update={"share": 0.0, "flag_version": stored.version})
            return await self._record(plan, held, action)
        now_stored = await self.plans.state(plan.flag)
        if now_stored is not None and now_stored.status != "running":
            return None
        await self.plans.put_state(state)
        return None


async def run_controller(
    controller: Controller,
    interval: float,
    leadership: Leadership,
    *,
    renew_every: float | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Tick every `interval` while leader; renew leadership more often than it expires."""
    renew = min(interval, renew_every or interval)
    stop = stop or asyncio.Event()
    last_tick = -float("inf")
    was_leader: bool | None = None  # log the first answer either way
    try:
        while not stop.is_set():
            try:
                leader = await leadership.hold()
                if controller.metrics is not None:
                    controller.metrics.leader.set(1 if leader else 0)
                if leader != was_leader:
                    log.info("controller: %s", "leader, acting" if leader else "standing by")
                    was_leader = leader
                if leader and time.monotonic() - last_tick >= interval - 1e-3:
                    last_tick = time.monotonic()
                    await controller.tick()
            except Exception:  # the edge: Redis away for a moment must not end the loop
                log.warning("controller: interval failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=renew)
    finally:
        with contextlib.suppress(Exception):
            await leadership.release()
