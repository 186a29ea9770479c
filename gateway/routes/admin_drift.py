"""`/admin/drift`: the drift profiles and scores of this replica; freeze or load a baseline.

Reads need the viewer role, changing the baseline flag_editor (the roles of /admin/flags).
With `--workers N` a request reaches one worker: the baseline it freezes is written to the
baseline file, which the other workers pick up on their next refresh.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict

from gateway.deps import RuntimeDep
from gateway.errors import Conflict, UnprocessableEntity
from gateway.observer import Observer
from gateway.routes.admin_flags import require_role
from gateway.runtime import Runtime


class FreezeBody(BaseModel):
    """Which flag's windows become the baseline (None: every flag)."""

    model_config = ConfigDict(extra="forbid")
    flag: str | None = None


def _observer(rt: Runtime) -> Observer:
    observer = rt.observer
    if observer is None or observer.drift is None:
        raise Conflict("drift is disabled (telemetry.drift.enabled is false)")
    return observer


def _view(observer: Observer) -> dict[str, Any]:
    assert observer.drift is not None
    drift = observer.drift
    scores = drift.scores()
    samples = drift.samples()
    profiles = []
    for key in sorted(set(samples) | set(drift.baselines)):
        base = drift.baselines.get(key)
        profiles.append(
            {
                "flag": key[0],
                "variant": key[1],
                "window_samples": samples.get(key, 0),
                "baseline_samples": base.total if base is not None else 0,
                "baseline_frozen_at": drift.frozen_at.get(key),
                "psi": scores.get(key),
            }
        )
    return {
        "object": "drift",
        "window": drift.window,
        "min_samples": drift.min_samples,
        "baseline_path": str(observer.baseline_path) if observer.baseline_path else None,
        "profiles": profiles,
    }


def admin_drift_router() -> APIRouter:
    """The `/admin/drift` routes."""
    router = APIRouter(
        prefix="/admin/drift", tags=["admin"], dependencies=[Depends(require_role("viewer"))]
    )

    @router.get("")
    async def show(rt: RuntimeDep) -> dict[str, Any]:
        """PSI per flag/variant/feature, window and baseline sizes."""
        observer = _observer(rt)
        observer.refresh()
        return _view(observer)

    @router.get("/baseline")
    async def baseline(rt: RuntimeDep) -> dict[str, Any]:
        """The frozen baseline as data (what `loopgate drift freeze --out` saves)."""
        drift = _observer(rt).drift
        assert drift is not None
        return drift.baseline_json()

    @router.post("/freeze", dependencies=[Depends(require_role("flag_editor"))])
    async def freeze(rt: RuntimeDep, body: Annotated[FreezeBody | None, Body()] = None) -> Any:
        """Make the current windows (of one flag, or all) the baseline."""
        observer = _observer(rt)
        keys = observer.freeze(body.flag if body else None)
        return {"frozen": [{"flag": f, "variant": v} for f, v in keys], **_view(observer)}

    @router.put("/baseline", dependencies=[Depends(require_role("flag_editor"))])
    async def load(rt: RuntimeDep, data: Annotated[dict[str, Any], Body()]) -> Any:
        """Replace the baseline with one saved before."""
        observer = _observer(rt)
        try:
            count = observer.load_baseline(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnprocessableEntity(f"not a drift baseline: {exc}") from exc
        return {"loaded": count, **_view(observer)}

    return router
