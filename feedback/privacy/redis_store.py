"""Unit keys in Redis, shared by every replica: `<ns>:privacy:key:<unit hash>` -> kid||secret.

A key is made with SET NX, so replicas racing on a new unit agree on one. Forgetting
deletes it and publishes the unit hash on `<ns>:privacy:forget`; every writer listening
drops its cached copy at once, and clears its whole cache after a reconnect (it may have
missed a message). Entries also expire after the cache TTL, whatever happens to Redis.
Redis must persist (AOF): losing it loses every unit's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from feedback.privacy.keys import KeyCache, KeyStoreError, UnitKey

log = logging.getLogger(__name__)


def key_name(namespace: str, unit_hash: str) -> str:
    """The Redis key holding a unit's content key."""
    return f"{namespace}:privacy:key:{unit_hash}"


def forget_channel(namespace: str) -> str:
    """The channel forgets are announced on."""
    return f"{namespace}:privacy:forget"


def _key(raw: Any) -> UnitKey | None:
    return UnitKey.from_record(bytes(raw)) if raw is not None else None


class RedisKeyStore:
    """The pipeline's KeyStore over redis.asyncio; `listen()` follows forgets."""

    def __init__(self, url: str, namespace: str, cache: KeyCache, timeout_s: float = 2.0) -> None:
        self.namespace = namespace
        self.cache = cache
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._listener: asyncio.Task[None] | None = None

    async def keys_for(self, unit_hashes: Collection[str]) -> dict[str, UnitKey]:
        """Every unit's key: cached, fetched in one MGET, or made with SET NX."""
        out: dict[str, UnitKey] = {}
        missing = []
        for unit in unit_hashes:
            hit, key = self.cache.lookup(unit, margin_s=1.0)  # as Sealer.missing asks
            if hit and key is not None:
                out[unit] = key
            else:
                missing.append(unit)
        if not missing:
            return out
        names = [key_name(self.namespace, unit) for unit in missing]
        try:
            found = dict(zip(missing, await self._redis.mget(names), strict=True))
            new = {unit: UnitKey.new() for unit, raw in found.items() if raw is None}
            if new:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for unit, key in new.items():
                        pipe.set(key_name(self.namespace, unit), key.record(), nx=True)
                    made = await pipe.execute()
                raced = [unit for unit, ok in zip(new, made, strict=True) if not ok]
                if raced:  # another replica made these first: use theirs
                    theirs = await self._redis.mget([key_name(self.namespace, u) for u in raced])
                    found.update(zip(raced, theirs, strict=True))
                for unit, key in new.items():
                    if unit not in raced:
                        found[unit] = key.record()
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis key store: {exc}") from exc
        for unit, raw in found.items():
            key = _key(raw)
            if key is not None:
                self.cache.put(unit, key)
                out[unit] = key
        return out

    async def forget(self, unit_hash: str) -> bool:
        """Delete the unit's key and tell every replica; True when there was one."""
        self.cache.discard(unit_hash)
        try:
            deleted = await self._redis.delete(key_name(self.namespace, unit_hash))
            await self._redis.publish(forget_channel(self.namespace), unit_hash)
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis key store: {exc}") from exc
        return bool(deleted)

    def listen(self) -> None:
        """Start following forgets announced by other replicas (a named background task)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._follow(), name="loopgate-privacy-forgets")

    async def _follow(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(forget_channel(self.namespace))
                self.cache.clear()  # forgets sent while we were not listening are unknown
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self.cache.discard(bytes(message["data"]).decode("ascii", "replace"))
            except (RedisError, OSError) as exc:
                log.warning("privacy: forget channel lost (%s); retry in %.1fs", exc, backoff)
                self.cache.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Stop listening and close the connection pool."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._redis.aclose()


class RedisKeyReader:
    """A KeyReader for offline readers (datasets build, events tail): sync, cached."""

    def __init__(self, url: str, namespace: str, cache: KeyCache) -> None:
        self.namespace = namespace
        self.cache = cache
        self._redis = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)

    def unit_key(self, unit_hash: str) -> UnitKey | None:
        """The unit's key, None once forgotten."""
        hit, key = self.cache.lookup(unit_hash)
        if hit:
            return key
        try:
            key = _key(self._redis.get(key_name(self.namespace, unit_hash)))
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis key store: {exc}") from exc
        self.cache.put(unit_hash, key)
        return key

    def forget_now(self, unit_hash: str) -> bool:
        """Delete the unit's key and tell every replica; True when there was one."""
        self.cache.discard(unit_hash)
        try:
            deleted = self._redis.delete(key_name(self.namespace, unit_hash))
            self._redis.publish(forget_channel(self.namespace), unit_hash)
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis key store: {exc}") from exc
        return bool(deleted)

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
