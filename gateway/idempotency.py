"""Idempotency keys for feedback: the first use records, repeats are acknowledged, not re-recorded.

Each key keeps the fingerprint of the body it first came with: the same key with another
body is a conflict (the client reused a key by mistake), not a repeat to acknowledge.
Local: a bounded TTL map in this process. Redis: `SET NX EX` of the fingerprint, so every
replica agrees.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Use = Literal["first", "repeat", "conflict"]


class IdempotencyKeys(Protocol):
    """Remembers which keys were used, and with which body, for a while."""

    async def use(self, key: str, fingerprint: str) -> Use:
        """ "first" the first time `key` is seen within the TTL; then "repeat" for the same
        fingerprint, "conflict" for another."""
        ...

    async def first_use(self, key: str) -> bool:
        """True the first time `key` is seen within the TTL (whatever the body)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _compare(stored: str, fingerprint: str) -> Use:
    # A key stored without a fingerprint (first_use, or an older gateway) matches any body.
    return "repeat" if not stored or stored == fingerprint else "conflict"


class LocalIdempotencyKeys:
    """In-process keys, oldest evicted first once `max_keys` are held."""

    def __init__(self, ttl_s: float, max_keys: int) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def use(self, key: str, fingerprint: str) -> Use:
        """See IdempotencyKeys.use."""
        now = time.monotonic()
        while self._seen:
            oldest, (expires, _) = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self.max_keys:
                break
            del self._seen[oldest]
        seen = self._seen.get(key)
        if seen is not None:
            return _compare(seen[1], fingerprint)
        self._seen[key] = (now + self.ttl_s, fingerprint)
        return "first"

    async def first_use(self, key: str) -> bool:
        """True the first time `key` is seen within the TTL."""
        return await self.use(key, "") == "first"

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisIdempotencyKeys:
    """Keys shared by all replicas; falls back to local memory while Redis is away."""

    def __init__(self, url: str, namespace: str, ttl_s: float, max_keys: int) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = f"{namespace}:feedback:idem:"
        self._ttl = max(1, int(ttl_s))
        self._local = LocalIdempotencyKeys(ttl_s, max_keys)

    async def use(self, key: str, fingerprint: str) -> Use:
        """See IdempotencyKeys.use; across replicas."""
        name = self._prefix + key
        try:
            if await self._redis.set(name, fingerprint.encode() or b"1", nx=True, ex=self._ttl):
                return "first"
            stored = await self._redis.get(name)
        except (RedisError, OSError) as exc:
            log.warning("idempotency keys: Redis unavailable (%s), using local memory", exc)
            return await self._local.use(key, fingerprint)
        text = stored.decode("latin-1") if isinstance(stored, bytes) else (stored or "")
        return _compare("" if text == "1" else text, fingerprint)

    async def first_use(self, key: str) -> bool:
        """True the first time `key` is seen within the TTL, across replicas."""
        return await self.use(key, "") == "first"

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        await self._redis.aclose()
