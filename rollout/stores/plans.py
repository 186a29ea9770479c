"""Where rollout plans and controller state live: memory, a JSON file, or Redis."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from rollout.plan import RolloutPlan, RolloutState


class PlanStore(Protocol):
    """Plans by flag, and each plan's controller state."""

    async def plans(self) -> list[RolloutPlan]:
        """Every plan."""
        ...

    async def plan(self, flag: str) -> RolloutPlan | None:
        """The plan on a flag, if any."""
        ...

    async def put_plan(self, plan: RolloutPlan, *, reset: bool = True) -> None:
        """Store a plan (reset: forget the old state, so the controller starts at step one)."""
        ...

    async def delete_plan(self, flag: str) -> None:
        """Remove a plan and its state."""
        ...

    async def state(self, flag: str) -> RolloutState | None:
        """The controller's state for a flag."""
        ...

    async def put_state(self, state: RolloutState) -> None:
        """Store the controller's state."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class MemoryPlanStore:
    """This process only."""

    def __init__(self) -> None:
        self._plans: dict[str, RolloutPlan] = {}
        self._states: dict[str, RolloutState] = {}

    async def plans(self) -> list[RolloutPlan]:
        """Every plan."""
        return [self._plans[k] for k in sorted(self._plans)]

    async def plan(self, flag: str) -> RolloutPlan | None:
        """The plan on a flag, if any."""
        return self._plans.get(flag)

    async def put_plan(self, plan: RolloutPlan, *, reset: bool = True) -> None:
        """Store a plan."""
        self._plans[plan.flag] = plan
        if reset:
            self._states.pop(plan.flag, None)

    async def delete_plan(self, flag: str) -> None:
        """Remove a plan and its state."""
        self._plans.pop(flag, None)
        self._states.pop(flag, None)

    async def state(self, flag: str) -> RolloutState | None:
        """The controller's state for a flag."""
        return self._states.get(flag)

    async def put_state(self, state: RolloutState) -> None:
        """Store the controller's state."""
        self._states[state.flag] = state

    async def aclose(self) -> None:
        """Nothing to release."""


class FilePlanStore(MemoryPlanStore):
    """A JSON file, rewritten atomically on every change (one controller per file)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._lock = asyncio.Lock()
        if path.exists():
            doc = json.loads(path.read_text() or "{}")
            for raw in doc.get("plans", {}).values():
                plan = RolloutPlan.model_validate(raw)
                self._plans[plan.flag] = plan
            for raw in doc.get("states", {}).values():
                state = RolloutState.model_validate(raw)
                self._states[state.flag] = state

    def _write(self) -> None:
        doc = {
            "plans": {k: p.model_dump(mode="json") for k, p in self._plans.items()},
            "states": {k: s.model_dump(mode="json") for k, s in self._states.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rollout-", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    async def put_plan(self, plan: RolloutPlan, *, reset: bool = True) -> None:
        """Store a plan and write the file."""
        async with self._lock:
            await super().put_plan(plan, reset=reset)
            self._write()

    async def delete_plan(self, flag: str) -> None:
        """Remove a plan and write the file."""
        async with self._lock:
            await super().delete_plan(flag)
            self._write()

    async def put_state(self, state: RolloutState) -> None:
        """Store the state and write the file."""
        async with self._lock:
            await super().put_state(state)
            self._write()


class RedisPlanStore:
    """Shared by gateways, the controller and the CLI: `<ns>:rollout:plan|state:<flag>`."""

    def __init__(self, url: str, namespace: str, timeout: float = 2.0) -> None:
        from redis.asyncio import Redis

        self._redis: Any = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._ns = namespace

    def _key(self, kind: str, flag: str) -> str:
        return f"{self._ns}:rollout:{kind}:{flag}"

    async def plans(self) -> list[RolloutPlan]:
        """Every plan."""
        flags = sorted(f.decode() for f in await self._redis.smembers(f"{self._ns}:rollout:plans"))
        out = []
        for flag in flags:
            plan = await self.plan(flag)
            if plan is not None:
                out.append(plan)
        return out

    async def plan(self, flag: str) -> RolloutPlan | None:
        """The plan on a flag, if any."""
        raw = await self._redis.get(self._key("plan", flag))
        return RolloutPlan.model_validate_json(raw) if raw else None

    async def put_plan(self, plan: RolloutPlan, *, reset: bool = True) -> None:
        """Store a plan."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._key("plan", plan.flag), plan.model_dump_json())
        pipe.sadd(f"{self._ns}:rollout:plans", plan.flag)
        if reset:
            pipe.delete(self._key("state", plan.flag))
        await pipe.execute()

    async def delete_plan(self, flag: str) -> None:
        """Remove a plan and its state."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key("plan", flag), self._key("state", flag))
        pipe.srem(f"{self._ns}:rollout:plans", flag)
        await pipe.execute()

    async def state(self, flag: str) -> RolloutState | None:
        """The controller's state for a flag."""
        raw = await self._redis.get(self._key("state", flag))
        return RolloutState.model_validate_json(raw) if raw else None

    async def put_state(self, state: RolloutState) -> None:
        """Store the controller's state."""
        await self._redis.set(self._key("state", state.flag), state.model_dump_json())

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def open_plan_store(redis_url: str | None, namespace: str, path: Path | None) -> PlanStore:
    """Redis when a URL is given, else a file when a path is given, else memory."""
    if redis_url:
        return RedisPlanStore(redis_url, namespace)
    if path is not None:
        return FilePlanStore(path)
    return MemoryPlanStore()
