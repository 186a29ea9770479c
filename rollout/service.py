"""Experiments in a process: counters, plan store and the optional controller, opened together."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from rollout.config import ExperimentsConfig
from rollout.controller import Controller, ControllerMetrics, run_controller
from rollout.counters import ExperimentCounters, ExperimentCounts, running_counters
from rollout.decision import decide
from rollout.plan import RolloutPlan, RolloutState
from rollout.readout import experiment_input, phases, variant_metrics
from rollout.scores import scores_view
from rollout.stores.counters import open_backend
from rollout.stores.lock import AlwaysLeader
from rollout.stores.plans import PlanStore, open_plan_store
from router.model import Flag
from router.stores.base import FlagStore


@dataclass(eq=False)
class Experiments:
    """What the gateway's request path, admin API and controller share."""

    config: ExperimentsConfig
    counters: ExperimentCounters
    plans: PlanStore
    flags: FlagStore | None = None
    controller: Controller | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def flag_lookup(store: FlagStore) -> Any:
    """(version, weights, killed) of a flag from the store's in-memory snapshot."""

    def lookup(key: str) -> tuple[int, dict[str, float], bool] | None:
        flag = store.snapshot().flags.get(key)
        if flag is None:
            return None
        return flag.version, {v.name: v.weight for v in flag.variants}, flag.killed

    return lookup


def default_plan(flag: Flag) -> RolloutPlan:
    """For a flag without a plan: control against the heaviest other variant, default policy."""
    others = [v for v in flag.variants if v.name != flag.control]
    canary = max(others, key=lambda v: v.weight).name if others else flag.control + "?"
    return RolloutPlan(flag=flag.key, control=flag.control, canary=canary)


def experiment_view(
    counts: ExperimentCounts,
    plan: RolloutPlan,
    state: RolloutState | None,
    now: float,
    *,
    planned: bool,
) -> dict[str, Any]:
    """The JSON the admin API returns and the CLI renders: report, metrics, phases, state."""
    step = state.step if state and state.step >= 0 else 0
    report = decide(experiment_input(counts, plan, step, now, state.p_value if state else 1.0))
    names = [v.name for v in report.variants]
    return {
        "object": "experiment",
        "flag": plan.flag,
        "planned": planned,
        "plan": plan.model_dump(mode="json"),
        "state": state.model_dump(mode="json") if state else None,
        "enough_data": report.decision != "insufficient_data",
        "report": report.model_dump(mode="json"),
        "metrics": [variant_metrics(counts, n).model_dump(mode="json") for n in names],
        # Per evaluator: mean score per variant, difference vs control, PPI, agreement.
        "scores": scores_view(counts, plan.canary, plan.control, names, plan.alpha),
        "phases": [
            {
                "started_at": p.started_at,
                "ended_at": p.ended_at,
                "weights": p.weights,
                "exposures": {n: c.exposures for n, c in p.counts.items()},
            }
            for p in phases(counts, plan.primary_kind)
        ],
    }


async def view(experiments: Experiments, flag: Flag) -> dict[str, Any]:
    """The experiment view of one flag now."""
    plan = await experiments.plans.plan(flag.key)
    state = await experiments.plans.state(flag.key) if plan else None
    counts = await experiments.counters.read(flag.key)
    return experiment_view(
        counts, plan or default_plan(flag), state, time.time(), planned=plan is not None
    )


@contextlib.asynccontextmanager
async def open_experiments(
    config: ExperimentsConfig, flags: FlagStore | None, registry: Any = None
) -> AsyncIterator[Experiments]:
    """Counters flushing in the background, the plan store, and the in-process controller."""
    backend = open_backend(
        config.redis_url, config.namespace, config.ttl_s, config.max_units_per_arm
    )
    counters = ExperimentCounters(backend, flag_lookup(flags) if flags is not None else None)
    plans = open_plan_store(config.redis_url, config.namespace, config.plans_path)
    try:
        for plan in config.plans:
            if await plans.plan(plan.flag) is None:
                await plans.put_plan(plan)
        async with running_counters(counters, config.flush_interval_s):
            experiments = Experiments(config, counters, plans, flags)
            if flags is not None and config.controller.in_process:
                metrics = ControllerMetrics(registry) if registry is not None else None
                experiments.controller = Controller(flags, counters, plans, metrics=metrics)
                task = asyncio.create_task(
                    run_controller(
                        experiments.controller, config.controller.interval_s, AlwaysLeader()
                    ),
                    name="rollout-controller",
                )
                experiments.tasks.add(task)
            try:
                yield experiments
            finally:
                for task in experiments.tasks:
                    task.cancel()
                for task in experiments.tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        await plans.aclose()
