"""The door of the FastAPI routes: one Authorization header, the caller known, the body bounded.

FastAPI reads a request's whole body before any dependency runs, so a key check in a
dependency comes after the bytes are in memory. This runs first, in raw ASGI: it refuses
duplicate Authorization headers (400), checks the key on /v1/feedback* and the admin token
on /admin/* (401/403) before a byte of the body is read, and reads the body itself up to
its route's limit (413 as soon as the limit is passed, not after buffering the rest). The
proxy and feedback routes never come here under HotPath: it serves them raw, and they check
the same themselves (gateway/proxy.py, gateway/routes/feedback_raw.py).
"""

from __future__ import annotations

from typing import Any

from gateway.asgi import ClientGone, Message, Receive, Send, read_body, refuse
from gateway.auth import admin_principal
from gateway.config import LimitsConfig
from gateway.errors import DuplicateAuthorization, GatewayError
from gateway.settings import Settings

_FEEDBACK = ("/v1/feedback", "/v1/feedback/batch")


def body_limit(limits: LimitsConfig, path: str) -> int:
    """The body limit of the route at `path`, in bytes; max_body_bytes caps them all."""
    if path == "/v1/feedback":
        limit = limits.feedback_body_bytes
    elif path == "/v1/feedback/batch":
        limit = limits.feedback_batch_body_bytes
    elif path == "/admin" or path.startswith("/admin/"):
        limit = limits.admin_body_bytes
    elif path in ("/v1/chat/completions", "/v1/completions"):
        limit = limits.max_body_bytes
    else:
        limit = limits.other_body_bytes
    return min(limit, limits.max_body_bytes)


class RequestGuard:
    """ASGI middleware of the FastAPI app (see the module docstring)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization: bytes | None = None
        count = 0
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization, count = value, count + 1
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else None
        path: str = scope["path"]
        try:
            if count > 1:
                raise DuplicateAuthorization("send one Authorization header, not several")
            self._authenticate(scope, path, authorization)
            body = await read_body(receive, body_limit(self.settings.limits, path), declared)
        except GatewayError as err:
            await refuse(send, err)
            return
        except ClientGone:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnects, for streaming answers
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _authenticate(self, scope: Message, path: str, authorization: bytes | None) -> None:
        """Refuse an unknown caller of a route that takes a body from known callers only."""
        if path in _FEEDBACK:
            # Starlette puts the app in the scope before its middleware runs.
            runtime = getattr(scope["app"].state, "runtime", None)
            auth = getattr(runtime, "auth", None)
            if auth is not None:
                auth.app(authorization)
        elif path == "/admin" or path.startswith("/admin/"):
            header = authorization.decode("latin-1") if authorization is not None else None
            admin_principal(self.settings, header)
