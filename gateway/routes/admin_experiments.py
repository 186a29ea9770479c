"""`/admin/experiments`: per-flag statistics and decision report; rollout plans and their state.

Reads need the viewer role, plan changes flag_editor (the roles of /admin/flags).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response
from pydantic import ValidationError

from gateway.deps import ExperimentsDep, FlagsDep
from gateway.errors import NotFound, UnprocessableEntity
from gateway.routes.admin_flags import require_role
from rollout.plan import RolloutPlan
from rollout.service import view
from router.model import Flag
from router.stores.base import FlagStore


async def _flag(store: FlagStore, key: str) -> Flag:
    flag = store.snapshot().flags.get(key)
    if flag is None:
        raise NotFound(f"no flag {key!r}", param="key")
    return flag


def admin_experiments_router() -> APIRouter:
    """The `/admin/experiments` routes."""
    router = APIRouter(
        prefix="/admin/experiments", tags=["admin"], dependencies=[Depends(require_role("viewer"))]
    )
    editor = [Depends(require_role("flag_editor"))]

    @router.get("")
    async def list_experiments(exp: ExperimentsDep) -> dict[str, Any]:
        """Flags with a rollout plan or with counts, and each plan's status."""
        plans = {p.flag: p for p in await exp.plans.plans()}
        keys = sorted(set(plans) | set(await exp.counters.backend.flags()))
        data = []
        for key in keys:
            state = await exp.plans.state(key) if key in plans else None
            data.append(
                {
                    "flag": key,
                    "planned": key in plans,
                    "status": state.status if state else None,
                    "share": state.share if state else None,
                    "last_decision": state.last_decision if state else None,
                }
            )
        return {"object": "list", "data": data}

    # Suffix routes first: flag keys may contain '/'.
    @router.get("/{key:path}/rollout")
    async def get_rollout(key: str, exp: ExperimentsDep) -> dict[str, Any]:
        """The plan on a flag and the controller's state (step, history)."""
        plan = await exp.plans.plan(key)
        if plan is None:
            raise NotFound(f"flag {key!r} has no rollout plan", param="key")
        state = await exp.plans.state(key)
        return {
            "object": "rollout",
            "flag": key,
            "plan": plan.model_dump(mode="json"),
            "state": state.model_dump(mode="json") if state else None,
            "controller_in_process": exp.controller is not None,
        }

    @router.put("/{key:path}/rollout", dependencies=editor)
    async def put_rollout(
        key: str,
        store: FlagsDep,
        exp: ExperimentsDep,
        body: Annotated[dict[str, Any], Body()],
    ) -> dict[str, Any]:
        """Put a plan on a flag; the controller starts it at its first step."""
        flag = await _flag(store, key)
        try:
            plan = RolloutPlan.model_validate({**body, "flag": key})
        except ValidationError as exc:
            raise UnprocessableEntity(f"plan: {_first(exc)}") from exc
        for param, name in (("control", plan.control), ("canary", plan.canary)):
            if not flag.has_variant(name):
                raise UnprocessableEntity(f"flag {key!r} has no variant {name!r}", param=param)
        await exp.plans.put_plan(plan)
        return {
            "object": "rollout",
            "flag": key,
            "plan": plan.model_dump(mode="json"),
            "state": None,
        }

    @router.post("/{key:path}/rollout/resume", dependencies=editor)
    async def resume(key: str, store: FlagsDep, exp: ExperimentsDep) -> dict[str, Any]:
        """Let a paused rollout go on from the weights the flag has now."""
        from rollout.controller import canary_share

        plan, state = await exp.plans.plan(key), await exp.plans.state(key)
        if plan is None or state is None:
            raise NotFound(f"flag {key!r} has no started rollout", param="key")
        flag = await _flag(store, key)
        resumed = state.model_copy(update={"status": "running", "share": canary_share(flag, plan)})
        await exp.plans.put_state(resumed)
        return {"object": "rollout", "flag": key, "state": resumed.model_dump(mode="json")}

    @router.delete("/{key:path}/rollout", dependencies=editor, status_code=204)
    async def delete_rollout(key: str, exp: ExperimentsDep) -> Response:
        """Remove the plan; the flag keeps its weights."""
        await exp.plans.delete_plan(key)
        return Response(status_code=204)

    @router.get("/{key:path}")
    async def get_experiment(key: str, store: FlagsDep, exp: ExperimentsDep) -> dict[str, Any]:
        """Per variant counts, shares with intervals, lift, sequential test, SRM and decision."""
        return await view(exp, await _flag(store, key))

    return router


def _first(exc: ValidationError) -> str:
    item = exc.errors()[0]
    return f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
