"""The one client of the gateway's admin API, for every command that talks to one.

Plain stdlib HTTP (urllib): the base install has no httpx, and a CLI makes one call at a
time. Failures raise CliError with the gateway's own message (OpenAI error JSON).
"""

from __future__ import annotations

import getpass
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from cli._common import CliError

_HINTS = {401: " (give --token or set LOOPGATE_ADMIN_TOKEN)"}


def default_actor() -> str:
    """Who is acting, for the audit log: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


@dataclass(frozen=True)
class AdminClient:
    """A gateway's /admin API: `call(method, path, body)` -> the JSON answer (None for 204)."""

    url: str
    token: str | None = None
    actor: str = field(default_factory=default_actor)
    timeout: float = 30.0

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; raises CliError on an error answer or when the gateway is unreachable."""
        headers = {"Accept": "application/json", "X-Loopgate-Actor": self.actor}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        target = self.url.rstrip("/") + path
        request = urllib.request.Request(target, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as err:
            raise CliError(_message(err.code, err.reason, err.read())) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach {self.url}: {reason} (is the gateway running? --url or LOOPGATE_URL)"
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(f"{target} answered something that is not JSON") from None

    def get(self, path: str) -> Any:
        """GET path."""
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        """POST path with a JSON body."""
        return self.call("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        """PUT path with a JSON body."""
        return self.call("PUT", path, body)

    def delete(self, path: str) -> Any:
        """DELETE path."""
        return self.call("DELETE", path)


def _message(status: int, reason: str, raw: bytes) -> str:
    message = None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(doc.get("detail"), str):
            message = doc["detail"]
    if not message:
        message = raw.decode(errors="replace").strip()[:300] or reason
    return f"{status}: {message}{_HINTS.get(status, '')}"
