"""Sessions: the admin token sealed in an encrypted, signed cookie, with a CSRF nonce (pure).

The cookie is Fernet (AES-CBC + HMAC-SHA256): the browser cannot read the token it holds,
and any replica with the same key can open it, so no session store is needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson
from cryptography.fernet import Fernet, InvalidToken

COOKIE = "loopgate_console"
ROLE_RANK: dict[str, int] = {"viewer": 0, "reviewer": 1, "flag_editor": 2, "admin": 3}


@dataclass(frozen=True, slots=True)
class Session:
    """Who is signed in, with which admin token and role, until when."""

    name: str
    role: str
    token: str
    expires: float
    csrf: str

    def allows(self, role: str) -> bool:
        """True when this session's role is at least `role`."""
        return ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]


class Sessions:
    """Seals and opens session cookies with one key."""

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        key = hmac.digest(secret, b"loopgate-console-session", "sha256")
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self.ttl_s = ttl_s

    def new(self, name: str, role: str, token: str, now: float) -> tuple[Session, str]:
        """A fresh session (new CSRF nonce) and its cookie value."""
        session = Session(name, role, token, now + self.ttl_s, secrets.token_urlsafe(24))
        payload = orjson.dumps(
            {"n": name, "r": role, "t": token, "e": session.expires, "c": session.csrf}
        )
        return session, self._fernet.encrypt(payload).decode()

    def open(self, cookie: str | None, now: float) -> Session | None:
        """The session in a cookie, or None when missing, forged or expired."""
        if not cookie:
            return None
        try:
            data = orjson.loads(self._fernet.decrypt(cookie.encode()))
            session = Session(data["n"], data["r"], data["t"], float(data["e"]), data["c"])
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        return session if session.expires > now else None


def csrf_ok(session: Session, given: str | None) -> bool:
    """The form's CSRF field matches the session's nonce."""
    return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())


def session_secret(configured: str | None, ids_keys: list[str]) -> bytes | None:
    """The configured secret, else one derived from the response-id key; None: make one up."""
    if configured:
        return configured.encode()
    if ids_keys:
        return hashlib.sha256(b"console\0" + ids_keys[0].encode()).digest()
    return None
