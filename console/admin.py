"""The gateway's admin API, called with the signed-in person's own token.

Every change the console makes goes through here, so the gateway checks the role and writes
the audit event (with the reason, sent as X-Loopgate-Reason) in one place.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx


class AdminError(Exception):
    """The admin API said no: its status and OpenAI-style message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminClient:
    """Calls /admin/* on one gateway (over HTTP, or in process through ASGI)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def call(
        self,
        token: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        reason: str | None = None,
        actor: str | None = None,
    ) -> Any:
        """One admin call; the JSON answer, or AdminError."""
        headers = {"Authorization": f"Bearer {token}"}
        if reason:
            headers["X-Loopgate-Reason"] = reason
        try:
            answer = await self._http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise AdminError(503, f"the gateway's admin API cannot be reached: {exc}") from exc
        if answer.status_code >= 400:
            try:
                message = answer.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = answer.text[:300] or answer.reason_phrase
            raise AdminError(answer.status_code, message)
        return answer.json() if answer.content else None

    async def whoami(self, token: str) -> dict[str, Any]:
        """Name and role of a token."""
        found: dict[str, Any] = await self.call(token, "GET", "/admin/whoami")
        return found

    async def flags(self, token: str) -> dict[str, Any]:
        """Every flag, store version and staleness."""
        found: dict[str, Any] = await self.call(token, "GET", "/admin/flags")
        return found

    async def flag(self, token: str, key: str) -> dict[str, Any]:
        """One flag."""
        found: dict[str, Any] = await self.call(token, "GET", f"/admin/flags/{quote(key)}")
        return found

    async def experiment(self, token: str, key: str) -> dict[str, Any] | None:
        """The experiment view of a flag; None when experiments are off or the flag has none."""
        try:
            found: dict[str, Any] = await self.call(
                token, "GET", f"/admin/experiments/{quote(key)}"
            )
        except AdminError as exc:
            if exc.status in (404, 409):
                return None
            raise
        return found

    async def rollout(self, token: str, key: str) -> dict[str, Any] | None:
        """The rollout plan and state on a flag, or None."""
        try:
            found: dict[str, Any] = await self.call(
                token, "GET", f"/admin/experiments/{quote(key)}/rollout"
            )
        except AdminError as exc:
            if exc.status in (404, 409):
                return None
            raise
        return found

    async def update_flag(
        self, token: str, key: str, body: dict[str, Any], reason: str
    ) -> dict[str, Any]:
        """Replace a flag (PUT); the body's `version` is the version it was read at."""
        found: dict[str, Any] = await self.call(
            token, "PUT", f"/admin/flags/{quote(key)}", body, reason=reason
        )
        return found

    async def record_feedback(self, token: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Record a feedback (a reviewer's preference) at the gateway: what it recorded.

        None when the gateway has no `POST /admin/feedback` (an older gateway): the caller
        records the event itself, and the rollout's counters do not see it.
        """
        try:
            found: dict[str, Any] = await self.call(token, "POST", "/admin/feedback", body)
        except AdminError as exc:
            if exc.status in (404, 405) and exc.message in ("Not Found", "Method Not Allowed"):
                return None  # the route is missing, not the response id
            raise
        return found

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()
