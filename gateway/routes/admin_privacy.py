"""`/admin/privacy/forget`: delete a unit's content key (admin role), written as an audit event.

The unit id is hashed with this gateway's unit key, the hash every event carries. From then
on the unit's sealed content reads "[erased]" wherever its events are: spools, Kafka, logs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedback.privacy.file_store import check_unit_hash
from feedback.privacy.keys import KeyStoreError
from feedback.privacy.stores import forget_unit
from feedback.schema import AuditBody, AuditEvent
from gateway.auth import AdminPrincipal
from gateway.deps import RuntimeDep
from gateway.errors import GatewayError, InvalidRequest
from gateway.routes.admin_flags import ActorHeader, _who, require_role

log = logging.getLogger(__name__)


class KeyStoreUnavailable(GatewayError):
    """The key store cannot be reached: nothing was forgotten; retry."""

    status, type, code = 503, "server_error", "key_store_unavailable"


class ForgetIn(BaseModel):
    """Which unit to forget: its id (as apps send it in `user`) or its hash."""

    model_config = ConfigDict(extra="forbid")
    unit_id: str | None = Field(None, min_length=1, max_length=1024)
    unit_hash: str | None = Field(None, min_length=8, max_length=128)
    reason: str | None = Field(None, max_length=1024)

    @model_validator(mode="after")
    def _one(self) -> ForgetIn:
        if (self.unit_id is None) == (self.unit_hash is None):
            raise ValueError("give exactly one of unit_id or unit_hash")
        return self


class ForgetOut(BaseModel):
    """What was done."""

    object: Literal["privacy.forget"] = "privacy.forget"
    unit_hash: str
    key_deleted: bool = Field(description="False: no key (already forgotten, or none sealed)")


AdminDep = Annotated[AdminPrincipal, Depends(require_role("admin"))]


def admin_privacy_router() -> APIRouter:
    """The `/admin/privacy` routes."""
    router = APIRouter(prefix="/admin/privacy", tags=["admin"])

    @router.post("/forget", response_model=ForgetOut)
    async def forget(
        body: ForgetIn, rt: RuntimeDep, admin: AdminDep, actor: ActorHeader = None
    ) -> ForgetOut:
        """Delete the unit's content key, so its event content can no longer be read."""
        unit = body.unit_hash if body.unit_hash is not None else None
        if unit is None:
            assert body.unit_id is not None
            unit = rt.signer.unit_hash(body.unit_id)
        try:
            check_unit_hash(unit)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="unit_hash") from exc
        sealer = rt.events.sealer if rt.events is not None else None
        events = rt.settings.events
        try:
            if sealer is not None:  # this process's cache forgets at once too
                deleted = await sealer.store.forget(unit)
            else:
                deleted = await asyncio.to_thread(
                    forget_unit, events.privacy, events.spool.dir, unit
                )
        except KeyStoreError as exc:
            raise KeyStoreUnavailable(f"nothing was forgotten: {exc}") from exc
        who = _who(admin, actor)
        log.warning("privacy: unit %s forgotten by %s (key deleted: %s)", unit, who, deleted)
        if rt.events is not None:
            audit = AuditBody(
                who=who,
                action="forget",
                what=f"unit:{unit}",
                after={"key_deleted": deleted},
                reason=body.reason,
            )
            now = time.time()
            rt.events.emit(
                AuditEvent.create(
                    audit, gateway=rt.settings.instance, now=now, type="unit_forgotten"
                )
            )
        return ForgetOut(unit_hash=unit, key_deleted=deleted)

    return router
