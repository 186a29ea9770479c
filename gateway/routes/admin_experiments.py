"""`/admin/experiments`: per-flag statistics and decision report; rollout plans and their state.

Reads need the viewer role, plan changes flag_editor (the roles of /admin/flags).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response
from pydantic import ValidationError

from feedback.schema import AuditBody, AuditEvent
from gateway.auth import AdminPrincipal
from gateway.deps import ExperimentsDep, FlagsDep, RuntimeDep
from gateway.errors import Conflict, NotFound, UnprocessableEntity
from gateway.routes.admin_flags import EditorDep, change_reason_header, require_role
from gateway.runtime import Runtime
from rollout.plan import ActionKind, RolloutAction, RolloutPlan, RolloutState
from rollout.service import view
from rollout.shadow_gate import shadow_view
from router.errors import ConflictError
from router.model import Flag
from router.stores.base import FlagStore, change_reason


async def _flag(store: FlagStore, key: str) -> Flag:
    flag = store.snapshot().flags.get(key)
    if flag is None:
        raise NotFound(f"no flag {key!r}", param="key")
    return flag


def admin_experiments_router() -> APIRouter:
    """The `/admin/experiments` routes."""
    router = APIRouter(
        prefix="/admin/experiments",
        tags=["admin"],
        dependencies=[Depends(require_role("viewer")), Depends(change_reason_header)],
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

    @router.post("/{key:path}/rollout/resume")
    async def resume(
        key: str, store: FlagsDep, exp: ExperimentsDep, who: EditorDep, rt: RuntimeDep
    ) -> dict[str, Any]:
        """Let a paused rollout go on from the weights the flag has now."""
        from rollout.controller import canary_share

        plan, state = await exp.plans.plan(key), await exp.plans.state(key)
        if plan is None or state is None:
            raise NotFound(f"flag {key!r} has no started rollout", param="key")
        flag = await _flag(store, key)
        share = canary_share(flag, plan)
        resumed = state.model_copy(update={"status": "running", "share": share}).with_action(
            _manual("resume", who, state.share, share, flag.version)
        )
        await exp.plans.put_state(resumed)
        _audit(rt, who, "rollout_resume", state, resumed)
        return {"object": "rollout", "flag": key, "state": resumed.model_dump(mode="json")}

    @router.post("/{key:path}/rollout/pause")
    async def pause(
        key: str,
        exp: ExperimentsDep,
        who: EditorDep,
        rt: RuntimeDep,
    ) -> dict[str, Any]:
        """Stop the controller on this flag; the weights stay as they are until resumed."""
        state = await exp.plans.state(key)
        if state is None:
            raise NotFound(f"flag {key!r} has no started rollout", param="key")
        paused = state.model_copy(update={"status": "paused"}).with_action(
            _manual("hold", who, state.share, state.share, state.flag_version)
        )
        await exp.plans.put_state(paused)
        _audit(rt, who, "rollout_pause", state, paused)
        return {"object": "rollout", "flag": key, "state": paused.model_dump(mode="json")}

    @router.post("/{key:path}/rollout/abort")
    async def abort(
        key: str,
        store: FlagsDep,
        exp: ExperimentsDep,
        who: EditorDep,
    ) -> dict[str, Any]:
        """Roll the canary back to 0% now and stop the rollout (the plan's rollback)."""
        plan, state = await exp.plans.plan(key), await exp.plans.state(key)
        if plan is None or state is None:
            raise NotFound(f"flag {key!r} has no started rollout", param="key")
        flag = await _flag(store, key)
        weights = {v.name: 0.0 for v in flag.variants} | plan.weights(0.0)
        try:
            stored = await store.put(
                flag.with_weights(weights), flag.version, who=who.name, action="set_weights"
            )
        except ConflictError as exc:
            raise Conflict(str(exc), param="expected_version") from exc
        aborted = state.model_copy(
            update={"status": "rolled_back", "share": 0.0, "flag_version": stored.version}
        ).with_action(_manual("rollback", who, state.share, 0.0, stored.version))
        await exp.plans.put_state(aborted)
        return {"object": "rollout", "flag": key, "state": aborted.model_dump(mode="json")}

    @router.delete("/{key:path}/rollout", dependencies=editor, status_code=204)
    async def delete_rollout(key: str, exp: ExperimentsDep) -> Response:
        """Remove the plan; the flag keeps its weights."""
        await exp.plans.delete_plan(key)
        return Response(status_code=204)

    @router.get("/{key:path}")
    async def get_experiment(key: str, store: FlagsDep, exp: ExperimentsDep) -> dict[str, Any]:
        """Per variant counts, shares with intervals, lift, sequential test, SRM and decision;
        each judged variant pair's win rate and the plan's shadow gate."""
        flag = await _flag(store, key)
        doc = await view(exp, flag)
        plan = await exp.plans.plan(key)
        doc["shadow"] = {
            "settings": flag.shadow.model_dump(mode="json") if flag.shadow else None,
            **shadow_view(
                await exp.counters.read(key),
                flag.control,
                plan.shadow_gate if plan else None,
                plan.canary if plan else None,
                plan.alpha if plan else 0.05,
                plan.tau if plan else 0.05,
            ),
        }
        return doc

    return router


def _manual(
    kind: ActionKind,
    who: AdminPrincipal,
    before: float | None,
    after: float | None,
    version: int | None,
) -> RolloutAction:
    reason = change_reason.get()
    text = f"{kind} by {who.name}" + (f": {reason}" if reason else "")
    return RolloutAction(
        time=time.time(),
        action=kind,
        from_share=before,
        to_share=after,
        flag_version=version,
        reasons=(text,),
    )


def _audit(
    rt: Runtime, who: AdminPrincipal, action: str, before: RolloutState, after: RolloutState
) -> None:
    """A rollout's pause or resume as an audit event (no flag changes, so the flag store's
    own audit does not see it): who, why (X-Loopgate-Reason), status and share before/after."""
    if rt.events is None:
        return
    body = AuditBody(
        who=who.name,
        action=action,
        what=before.flag,
        version=after.flag_version,
        before={"status": before.status, "share": before.share},
        after={"status": after.status, "share": after.share},
        reason=change_reason.get(),
    )
    now = time.time()
    rt.events.emit(AuditEvent.create(body, gateway=rt.settings.instance, now=now, type=action))


def _first(exc: ValidationError) -> str:
    item = exc.errors()[0]
    return f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
