"""API keys and admin tokens: stored hashed, one keyed hash and a dict lookup per request.

Keys never appear in config, logs or events: only their SHA-256 (or, with `auth.pepper`,
their HMAC-SHA256 under the pepper, so a leaked config cannot be brute-forced offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.config import ApiKeyConfig, AuthConfig
from gateway.errors import Forbidden, GatewayError, Unauthorized

log = logging.getLogger(__name__)

# reviewer: reads, and labels answers in the console's review queues.
ROLE_RANK: dict[str, int] = {"viewer": 0, "reviewer": 1, "flag_editor": 2, "admin": 3}


def hash_secret(secret: str | bytes, pepper: bytes | None = None) -> str:
    """The stored form of a key or token: hex SHA-256, or HMAC-SHA256 under the pepper."""
    data = secret.encode() if isinstance(secret, str) else secret
    if pepper:
        return hmac.digest(pepper, data, "sha256").hex()
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class AppPrincipal:
    """An authenticated app (or the anonymous one) and what it may do."""

    app_id: str
    rpm: int | None = None
    tpm: int | None = None
    max_tokens: int | None = None
    allowed_models: frozenset[str] | None = None
    qa_override: bool = False
    key_name: str = ""
    consent: str = "full"

    def consent_for(self, header: str | None) -> str:
        """The request's consent: "none" when the app or the X-Loopgate-Consent header says so."""
        if self.consent == "none" or (header or "").strip().lower() == "none":
            return "none"
        return "full"

    def may_use(self, model: str) -> bool:
        """True when this app may ask for `model`."""
        return self.allowed_models is None or model in self.allowed_models

    @property
    def limited(self) -> bool:
        """True when a rate limit applies."""
        return self.rpm is not None or self.tpm is not None


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """A holder of an admin token."""

    name: str
    role: str
    shared: bool = False  # the legacy flags.admin_token: the actor header names the person

    def allows(self, role: str) -> bool:
        """True when this role is at least `role`."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def _principal(key: ApiKeyConfig) -> AppPrincipal:
    return AppPrincipal(
        app_id=key.app_id,
        rpm=key.limits.rpm,
        tpm=key.limits.tpm,
        max_tokens=key.limits.max_tokens,
        allowed_models=frozenset(key.allowed_models) if key.allowed_models is not None else None,
        qa_override=key.qa_override,
        key_name=key.name,
        consent=key.consent,
    )


class Authenticator:
    """App keys by hash (config plus Redis), the anonymous app, and a pepper."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._pepper = config.pepper.get_secret_value().encode() if config.pepper else None
        self._static = {key.hash: _principal(key) for key in config.keys}
        self._keys: Mapping[str, AppPrincipal] = self._static
        self.anonymous: AppPrincipal | None = None
        if config.anonymous_allowed():
            anon = config.anonymous
            self.anonymous = AppPrincipal(
                app_id=anon.app_id,
                rpm=anon.limits.rpm,
                tpm=anon.limits.tpm,
                max_tokens=anon.limits.max_tokens,
                allowed_models=(
                    frozenset(anon.allowed_models) if anon.allowed_models is not None else None
                ),
                consent=anon.consent,
            )
        # With no key anywhere, any bearer token (the SDK always sends one) is anonymous.
        self._open = self.anonymous is not None and not self._static and config.redis_url is None

    def app(self, authorization: bytes | None) -> AppPrincipal:
        """The app behind an Authorization header value, or Unauthorized."""
        if self._open:
            assert self.anonymous is not None
            return self.anonymous
        if not authorization:
            if self.anonymous is not None:
                return self.anonymous
            raise Unauthorized("You didn't provide an API key: send Authorization: Bearer <key>.")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise Unauthorized("Authorization must be `Bearer <key>`.")
        found = self._keys.get(hash_secret(token, self._pepper))
        if found is None:
            # Never echo the key, not even a prefix: it may be a real key of another system.
            raise Unauthorized("Incorrect API key provided.")
        return found

    def replace_dynamic(self, keys: Iterable[ApiKeyConfig]) -> int:
        """Serve config keys plus these (from Redis); one atomic swap, no request waits."""
        merged = dict(self._static)
        for key in keys:
            merged.setdefault(key.hash, _principal(key))
        self._keys = merged
        return len(merged)


def admin_principal(settings: Any, authorization: str | None) -> AdminPrincipal:
    """The admin behind an Authorization header: named tokens with roles, or flags.admin_token."""
    auth: AuthConfig | None = getattr(settings, "auth", None)
    tokens = auth.admin_tokens if auth is not None else []
    legacy: str | None = settings.flags.admin_token
    if not tokens and not legacy:
        raise Forbidden(
            "the admin API is disabled: configure auth.admin_tokens (or flags.admin_token)"
        )
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given:
        if tokens:
            pepper = auth.pepper.get_secret_value().encode() if auth and auth.pepper else None
            digest = hash_secret(given, pepper)
            for token in tokens:
                if hmac.compare_digest(digest, token.hash):
                    return AdminPrincipal(token.name, token.role)
        if legacy and hmac.compare_digest(given.encode(), legacy.encode()):
            return AdminPrincipal("admin", "admin", shared=True)
    raise Unauthorized("a valid admin token is required: Authorization: Bearer <token>")


def caller_app(auth: Authenticator, request: Request) -> AppPrincipal:
    """The app calling a FastAPI route, from its Authorization header."""
    header = request.headers.get("authorization")
    return auth.app(header.encode("latin-1") if header is not None else None)


class ModelNotAllowed(GatewayError):
    """The app's key does not cover this model."""

    status, type, code = 403, "permission_error", "model_not_allowed"


@asynccontextmanager
async def keys_from_redis(auth: Authenticator) -> AsyncIterator[None]:
    """Keep the keys stored in Redis in memory, re-read on an interval (when configured)."""
    config = auth.config
    if config.redis_url is None:
        yield
        return
    client = Redis.from_url(config.redis_url, socket_timeout=2, socket_connect_timeout=2)
    task = asyncio.create_task(_refresh_keys(auth, client), name="loopgate-auth-keys")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


async def _refresh_keys(auth: Authenticator, client: Redis) -> None:
    config = auth.config
    pattern = f"{config.namespace}:apikey:*"
    while True:
        try:
            keys: list[ApiKeyConfig] = []
            async for name in client.scan_iter(match=pattern, count=500):
                if len(keys) >= config.max_redis_keys:
                    log.warning("auth: more than %d keys in Redis; the rest are ignored", len(keys))
                    break
                raw = await client.get(name)
                if raw is None:
                    continue
                try:
                    keys.append(ApiKeyConfig.model_validate_json(raw))
                except ValueError:
                    log.warning("auth: unreadable key entry %s in Redis", _safe(name))
            auth.replace_dynamic(keys)
        except (RedisError, OSError) as exc:
            # Fail static: keep serving the last set of keys read.
            log.warning("auth: cannot read keys from Redis (%s); serving the last set", exc)
        await asyncio.sleep(config.redis_refresh_s)


def _safe(name: bytes | str) -> str:
    """A Redis key name for logs: its prefix only (the hash part is not a secret, but long)."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text[:48]
