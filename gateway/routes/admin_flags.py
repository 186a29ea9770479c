"""`/admin/flags`: list, read, create, update, weights, kill switch, delete, explain.

The store is the Runtime's FlagStore (gateway.deps.FlagsDep). Callers present an admin token
(`auth.admin_tokens`, hashed, each with a role; or the shared `flags.admin_token`, which is
an admin): viewer reads and explains, flag_editor also creates, updates, re-weights and
kills, admin also deletes. No token configured: the API answers 403.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import AdminPrincipal, admin_principal
from gateway.config import Role
from gateway.deps import FlagsDep, SettingsDep
from gateway.errors import (
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    UnprocessableEntity,
)
from router import admin
from router.errors import (
    ConflictError,
    FlagNotFound,
    FlagValidationError,
    ReadOnlyStore,
    StoreUnavailable,
)
from router.model import EvalContext, Flag, parse_flag
from router.stores.base import change_reason
from router.stores.flagfile import flag_body


class FlagStoreUnavailable(GatewayError):
    """The flag store's backend is down: reads still serve, changes cannot be made."""

    status, type, code = 503, "server_error", "flag_store_unavailable"


class FlagStoreReadOnly(GatewayError):
    """The configured flag store does not take changes."""

    status, type, code = 403, "permission_error", "flag_store_read_only"


def require_role(role: Role) -> Callable[..., AdminPrincipal]:
    """A dependency accepting admin tokens whose role is at least `role`."""

    def check(
        settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
    ) -> AdminPrincipal:
        principal = admin_principal(settings, authorization)
        if not principal.allows(role):
            raise Forbidden(f"{principal.name} has role {principal.role}; this needs {role}")
        return principal

    check.__name__ = f"require_{role}"
    return check


async def change_reason_header(
    reason: Annotated[str | None, Header(alias="X-Loopgate-Reason", max_length=1000)] = None,
) -> None:
    """The person's reason for a change (X-Loopgate-Reason), for the audit event it writes."""
    # async, so it runs in the request's task: the store reads it there when it audits.
    change_reason.set(reason.strip() or None if reason else None)


def _who(admin: AdminPrincipal, actor: str | None) -> str:
    # The shared token says nothing about the person: the actor header does. A named token
    # is the identity; the header only annotates it.
    if admin.shared:
        return actor or admin.name
    return f"{admin.name} ({actor})" if actor else admin.name


StoreDep = FlagsDep
EditorDep = Annotated[AdminPrincipal, Depends(require_role("flag_editor"))]
AdminDep = Annotated[AdminPrincipal, Depends(require_role("admin"))]
ActorHeader = Annotated[str | None, Header(alias="X-Loopgate-Actor")]


@contextmanager
def _errors() -> Iterator[None]:
    """Router errors become the gateway's OpenAI-shaped errors."""
    try:
        yield
    except FlagNotFound as exc:
        raise NotFound(str(exc), param="key") from exc
    except ConflictError as exc:
        raise Conflict(str(exc), param="expected_version") from exc
    except FlagValidationError as exc:
        raise UnprocessableEntity(str(exc)) from exc
    except ReadOnlyStore as exc:
        raise FlagStoreReadOnly(str(exc)) from exc
    except StoreUnavailable as exc:
        raise FlagStoreUnavailable(str(exc)) from exc


class WeightsBody(BaseModel):
    """New weights by variant name; unnamed variants keep theirs."""

    model_config = ConfigDict(extra="forbid")
    weights: dict[str, float] = Field(min_length=1)
    expected_version: int | None = None


class VersionBody(BaseModel):
    """The version the change is made against (None: whatever is stored now)."""

    model_config = ConfigDict(extra="forbid")
    expected_version: int | None = None


class ExplainBody(BaseModel):
    """The context to evaluate the flag for."""

    model_config = ConfigDict(extra="forbid")
    unit_id: str
    app_id: str = "admin"
    attributes: dict[str, str] = Field(default_factory=dict)
    qa_variant: str | None = None
    qa_allowed: bool = False


def _flag_json(flag: Flag) -> dict[str, Any]:
    return {"object": "flag", **flag_body(flag)}


def _flag_input(body: dict[str, Any], **fixed: Any) -> Flag:
    # What GET returns can be sent back as is: drop the response-only `object` field.
    return parse_flag({**{k: v for k, v in body.items() if k != "object"}, **fixed})


def admin_flags_router() -> APIRouter:
    """The `/admin/flags` routes; mount on an app whose state has `flags` and `settings`."""
    router = APIRouter(
        prefix="/admin/flags",
        tags=["admin"],
        dependencies=[Depends(require_role("viewer")), Depends(change_reason_header)],
    )

    @router.get("")
    async def list_flags(store: StoreDep) -> dict[str, Any]:
        """Every flag this replica serves, with the store version and staleness."""
        snapshot = store.snapshot()
        return {
            "object": "list",
            "data": [_flag_json(flag) for flag in snapshot],
            "store_version": snapshot.version,
            "staleness_seconds": store.staleness_seconds(),
        }

    @router.post("", status_code=201)
    async def create_flag(
        store: StoreDep,
        who: EditorDep,
        body: Annotated[dict[str, Any], Body()],
        actor: ActorHeader = None,
    ) -> dict[str, Any]:
        """Create a flag (version 1); 409 if the key exists."""
        with _errors():
            flag = await store.put(_flag_input(body, version=1), None, who=_who(who, actor))
        return _flag_json(flag)

    # Routes with a suffix come before the bare `{key:path}` ones: keys may contain '/'.
    @router.post("/{key:path}/weights")
    async def set_weights(
        key: str, store: StoreDep, who: EditorDep, body: WeightsBody, actor: ActorHeader = None
    ) -> dict[str, Any]:
        """Replace the named variants' weights."""
        with _errors():
            flag = await admin.set_weights(
                store, key, body.weights, body.expected_version, who=_who(who, actor)
            )
        return _flag_json(flag)

    @router.post("/{key:path}/kill")
    async def kill(
        key: str,
        store: StoreDep,
        who: EditorDep,
        body: VersionBody | None = None,
        actor: ActorHeader = None,
    ) -> dict[str, Any]:
        """Send all traffic of the flag to its control variant."""
        expected = body.expected_version if body else None
        with _errors():
            flag = await admin.set_killed(store, key, True, expected, who=_who(who, actor))
        return _flag_json(flag)

    @router.post("/{key:path}/unkill")
    async def unkill(
        key: str,
        store: StoreDep,
        who: EditorDep,
        body: VersionBody | None = None,
        actor: ActorHeader = None,
    ) -> dict[str, Any]:
        """Lift the kill switch: the split and rules apply again."""
        expected = body.expected_version if body else None
        with _errors():
            flag = await admin.set_killed(store, key, False, expected, who=_who(who, actor))
        return _flag_json(flag)

    @router.post("/{key:path}/explain")
    async def explain(key: str, store: StoreDep, body: ExplainBody) -> dict[str, Any]:
        """The variant this replica gives a unit now, and the reason."""
        ctx = EvalContext(model=key, **body.model_dump())
        with _errors():
            result = admin.explain(store, key, ctx)
        return {
            "object": "flag.assignment",
            "flag": result.flag_key,
            "flag_version": result.flag_version,
            "variant": result.variant.name,
            "pool": result.variant.pool,
            "served_model": result.variant.served_model,
            "reason": result.reason,
            "unit_id": body.unit_id,
        }

    @router.get("/{key:path}")
    async def get_flag(key: str, store: StoreDep) -> dict[str, Any]:
        """One flag as the store holds it now."""
        with _errors():
            flag = await admin.current(store, key)
        return _flag_json(flag)

    @router.put("/{key:path}")
    async def update_flag(
        key: str,
        store: StoreDep,
        who: EditorDep,
        body: Annotated[dict[str, Any], Body()],
        actor: ActorHeader = None,
    ) -> dict[str, Any]:
        """Replace a flag; the body's `version` is the version it was read at (required)."""
        expected = body.get("version")
        if not isinstance(expected, int) or isinstance(expected, bool):
            raise UnprocessableEntity(
                "version: state the version you read (optimistic concurrency)", param="version"
            )
        if body.get("key", key) != key:
            raise UnprocessableEntity(f"key: body says {body['key']!r}, URL says {key!r}", "key")
        with _errors():
            flag = await store.put(_flag_input(body, key=key), expected, who=_who(who, actor))
        return _flag_json(flag)

    @router.delete("/{key:path}", status_code=204)
    async def delete_flag(
        key: str,
        store: StoreDep,
        who: AdminDep,
        expected_version: Annotated[int | None, Query()] = None,
        actor: ActorHeader = None,
    ) -> Response:
        """Delete a flag; its model falls back to the static route."""
        with _errors():
            await admin.remove(store, key, expected_version, who=_who(who, actor))
        return Response(status_code=204)

    return router
