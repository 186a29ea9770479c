"""Idempotency keys for feedback: the first use records, repeats are acknowledged, not re-recorded.

Local: a bounded TTL map in this process. Redis: `SET NX EX`, so every replica agrees.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class IdempotencyKeys(Protocol):
    """Remembers which keys were used, for a while."""

    async def first_use(self, key: str) -> bool:
        """True the first time `key` is seen within the TTL."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class LocalIdempotencyKeys:
    """In-process keys, oldest evicted first once `max_keys` are held."""

    def __init__(self, ttl_s: float, max_keys: int) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._seen: OrderedDict[str, float] = OrderedDict()

    async def first_use(self, key: str) -> bool:
        """True the first time `key` is seen within the TTL."""
        now = time.monotonic()
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self.max_keys:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now + self.ttl_s
        return True

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisIdempotencyKeys:
    """Keys shared by all replicas; falls back to local memory while Redis is away."""

    def __init__(self, url: str, namespace: str, ttl_s: float, max_keys: int) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = f"{namespace}:feedback:idem:"
        self._ttl = max(1, int(ttl_s))
        self._local = LocalIdempotencyKeys(ttl_s, max_keys)

    async def first_use(self, key: str) -> bool:
        """True the first time `key` is seen within the TTL, across replicas."""
        try:
            return bool(await self._redis.set(self._prefix + key, b"1", nx=True, ex=self._ttl))
        except (RedisError, OSError) as exc:
            log.warning("idempotency keys: Redis unavailable (%s), using local memory", exc)
            return await self._local.first_use(key)

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        await self._redis.aclose()
