"""The FlagStore seam every store implements, and the audit record each write yields."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from router.model import Flag
from router.snapshot import FlagSnapshot

log = logging.getLogger("loopgate.flags.audit")

# The reason a person gave for the change being made in this request (X-Loopgate-Reason):
# set by the admin API around a write, copied into the audit record the store emits.
change_reason: ContextVar[str | None] = ContextVar("loopgate_change_reason", default=None)

AuditAction = Literal["create", "update", "delete", "set_weights", "kill", "unkill", "seed"]


class AuditRecord(BaseModel):
    """One successful change: who made it, what it was, the flag before and after."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    who: str
    action: AuditAction
    flag_key: str
    before: Flag | None
    after: Flag | None
    time: datetime
    store_version: int
    reason: str | None = None


AuditSink = Callable[[AuditRecord], None]


class FlagStore(Protocol):
    """Where flags live. Reads come from memory; only writes and `get` touch the backend."""

    def snapshot(self) -> FlagSnapshot:
        """Every flag this replica serves now; never waits on I/O."""
        ...

    async def get(self, key: str) -> Flag | None:
        """The flag as the backend holds it now (StoreUnavailable when it cannot be reached)."""
        ...

    async def put(
        self,
        flag: Flag,
        expected_version: int | None,
        *,
        who: str,
        action: AuditAction | None = None,
    ) -> Flag:
        """Create (expected None) or replace (expected = stored version); returns the stored flag.

        The stored flag's version is expected + 1 (1 when created), whatever `flag.version`
        says; a stale expected version raises ConflictError.
        """
        ...

    async def delete(self, key: str, expected_version: int, *, who: str) -> None:
        """Remove the flag if it is still at `expected_version` (ConflictError otherwise)."""
        ...

    def staleness_seconds(self) -> float:
        """How long the snapshot may have lagged the backend; 0 when in sync."""
        ...


def log_audit(record: AuditRecord) -> None:
    """Default audit sink until events carry them: one structured log line per change."""
    log.info(
        "flag %s %s by %s (version %s -> %s, store version %d)",
        record.flag_key,
        record.action,
        record.who,
        record.before.version if record.before else None,
        record.after.version if record.after else None,
        record.store_version,
        extra={"audit": record.model_dump(mode="json")},
    )


def emit_audit(on_audit: AuditSink, record: AuditRecord) -> None:
    """Hand `record` to the sink; the write has happened, so a failing sink is only logged."""
    reason = change_reason.get()
    if record.reason is None and reason:
        record = record.model_copy(update={"reason": reason})
    try:
        on_audit(record)
    except Exception:
        logging.getLogger("loopgate.flags").exception(
            "audit sink failed for flag %s %s", record.flag_key, record.action
        )
