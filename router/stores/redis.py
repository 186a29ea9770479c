"""Redis store: flags as JSON, a version counter, changes published; served from memory.

Layout (namespace `ns`, default `loopgate`):

    <ns>:flag:<key>      {"store_version": N, "flag": {...Flag JSON...}}
    <ns>:flags:version   counter, incremented by every write
    <ns>:flags           channel: {"key": K, "store_version": N, "flag": {...} | null}

Writes are Lua scripts: compare the stored flag version with the one the writer states, then
set, count and publish in one step, so replicas see changes in store-version order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router.errors import ConflictError, FlagNotFound, FlagValidationError, StoreUnavailable
from router.model import Flag, parse_flag, validate_pools
from router.snapshot import FlagSnapshot
from router.stores.base import AuditAction, AuditRecord, AuditSink, emit_audit

log = logging.getLogger("loopgate.flags.redis")

# KEYS: flag key, counter. ARGV: expected version ('' = must not exist), flag JSON, channel, key.
_PUT = """
local cur = redis.call('GET', KEYS[1])
local curv = false
if cur then curv = cjson.decode(cur)['flag']['version'] end
if ARGV[1] == '' then
  if cur then return {0, curv} end
elseif (not cur) or curv ~= tonumber(ARGV[1]) then
  return {0, curv}
end
local sv = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], '{"store_version":' .. sv .. ',"flag":' .. ARGV[2] .. '}')
redis.call('PUBLISH', ARGV[3],
  '{"key":' .. cjson.encode(ARGV[4]) .. ',"store_version":' .. sv .. ',"flag":' .. ARGV[2] .. '}')
return {1, sv, cur}
"""

# KEYS: flag key, counter. ARGV: expected version, channel, key.
_DELETE = """
local cur = redis.call('GET', KEYS[1])
if not cur then return {0, false} end
local curv = cjson.decode(cur)['flag']['version']
if curv ~= tonumber(ARGV[1]) then return {0, curv} end
local sv = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2],
  '{"key":' .. cjson.encode(ARGV[3]) .. ',"store_version":' .. sv .. ',"flag":null}')
return {1, sv, cur}
"""

_UNREACHABLE = (RedisError, OSError, asyncio.TimeoutError)


class RedisFlagStore:
    """All flags in memory, kept current by a pubsub listener and a periodic full re-read."""

    def __init__(
        self,
        redis: Redis,
        known_pools: Collection[str],
        on_audit: AuditSink,
        *,
        namespace: str = "loopgate",
        resync_interval: float = 30.0,
        reconnect_max_delay: float = 5.0,
        close_timeout: float = 3.0,
    ) -> None:
        self._redis = redis
        self._close_timeout = close_timeout
        self._pools = frozenset(known_pools)
        self._on_audit = on_audit
        self._prefix = f"{namespace}:flag:"
        self._counter = f"{namespace}:flags:version"
        self.channel = f"{namespace}:flags"
        self._resync_interval = resync_interval
        self._max_delay = reconnect_max_delay
        self._put_script = redis.register_script(_PUT)
        self._delete_script = redis.register_script(_DELETE)
        # key -> (store version of the write that produced it, flag)
        self._entries: dict[str, tuple[int, Flag]] = {}
        # Every write up to this store version is reflected in _entries (set by a re-read).
        self._floor = 0
        self._snapshot = FlagSnapshot()
        self._synced = asyncio.Event()
        self._healthy = False
        self._last_ok = time.monotonic()
        self.seed: dict[str, Flag] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        known_pools: Collection[str],
        on_audit: AuditSink,
        *,
        namespace: str = "loopgate",
        resync_interval: float = 30.0,
        reconnect_max_delay: float = 5.0,
        socket_timeout: float = 2.0,
        seed: Mapping[str, Flag] | None = None,
    ) -> AsyncIterator[RedisFlagStore]:
        """Connect, follow changes in a background task, and stop it when the block exits.

        If Redis cannot be reached within `socket_timeout` the store starts empty (the gateway
        serves its static routes) and keeps trying; it never fails the start.
        """
        # No client-side retries: the listener has its own backoff, writes report at once.
        redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        store = cls(
            redis,
            known_pools,
            on_audit,
            namespace=namespace,
            resync_interval=resync_interval,
            reconnect_max_delay=reconnect_max_delay,
            close_timeout=socket_timeout + 1,
        )
        store.seed = dict(seed or {})
        task = asyncio.create_task(
            store._follow_forever(), name=f"flags-redis-listener:{namespace}"
        )
        try:
            try:
                await asyncio.wait_for(store._synced.wait(), socket_timeout)
            except TimeoutError:
                log.error("redis flag store at %s not reachable; starting with no flags", url)
            yield store
        finally:
            # Closing talks to redis-py's connection teardown, which can wait forever on a
            # transport that never reports it closed (seen once in CI: no socket left, the
            # event loop idle). Bounded, so a stuck client cannot hang the gateway's shutdown.
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=store._close_timeout)
            if not done:
                log.warning("redis flag listener did not stop within %.1fs", store._close_timeout)
            try:
                await asyncio.wait_for(redis.aclose(), store._close_timeout)
            except _UNREACHABLE:
                log.warning("closing the redis flag store's connections did not finish")

    def snapshot(self) -> FlagSnapshot:
        """Every flag served now; never waits on Redis."""
        return self._snapshot

    def staleness_seconds(self) -> float:
        """0 while following Redis; else seconds since Redis last answered."""
        return 0.0 if self._healthy else time.monotonic() - self._last_ok

    # -- following changes -------------------------------------------------------------

    async def _follow_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._follow()
            except _UNREACHABLE as exc:
                if self._healthy:
                    log.warning("lost redis flag store (%s); serving the last flags", exc)
                    delay = 0.1
                self._healthy = False
            except Exception:
                # A bug must not end the listener: the replica would silently stop following.
                log.exception("redis flag listener failed; restarting it")
                self._healthy = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    async def _follow(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            # Subscribe before the re-read so no change falls between the two.
            await pubsub.subscribe(self.channel)
            if self.seed:
                await self._seed_if_empty()
            await self._resync()
            if not self._healthy:
                log.info("following redis flag store (%d flags)", len(self._entries))
            self._healthy = True
            self._synced.set()
            loop = asyncio.get_running_loop()
            next_resync = loop.time() + self._resync_interval
            while True:
                wait = max(0.0, min(1.0, next_resync - loop.time()))
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                self._last_ok = time.monotonic()
                if message is not None and message.get("type") == "message":
                    self._apply_message(message["data"])
                if loop.time() >= next_resync:
                    await self._resync()
                    next_resync = loop.time() + self._resync_interval
        finally:
            with contextlib.suppress(*_UNREACHABLE):
                await asyncio.wait_for(pubsub.aclose(), self._close_timeout)  # type: ignore[no-untyped-call]

    async def _resync(self) -> None:
        floor = int(await self._redis.get(self._counter) or 0)
        keys = [k async for k in self._redis.scan_iter(match=f"{self._prefix}*", count=500)]
        entries: dict[str, tuple[int, Flag]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for name, raw in zip(chunk, await self._redis.mget(chunk), strict=True):
                if raw is None:
                    continue
                key = name[len(self._prefix) :]
                entry = self._decode(key, raw)
                if entry is not None:
                    entries[key] = entry
                elif key in self._entries:
                    entries[key] = self._entries[key]  # keep the last good one
        self._entries, self._floor = entries, floor
        self._publish_snapshot(floor)
        self._last_ok = time.monotonic()

    def _decode(self, key: str, raw: str | bytes) -> tuple[int, Flag] | None:
        try:
            envelope = json.loads(raw)
            flag = parse_flag(envelope["flag"])
            validate_pools(flag, self._pools)
            if flag.key != key:
                raise FlagValidationError(f"stored under {key!r} but says key {flag.key!r}")
            return int(envelope["store_version"]), flag
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unusable flag %r in redis: %s", key, exc)
            return None

    def _apply_message(self, data: str) -> None:
        try:
            message = json.loads(data)
            key, version = str(message["key"]), int(message["store_version"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring malformed flag change message %r: %s", data[:200], exc)
            return
        if message.get("flag") is None:
            self._apply(key, version, None)
            return
        entry = self._decode(key, json.dumps({"store_version": version, "flag": message["flag"]}))
        if entry is not None:
            self._apply(key, version, entry[1])

    def _apply(self, key: str, version: int, flag: Flag | None) -> None:
        # A change the last re-read already reflects, or older than what we hold, is skipped.
        current = self._entries.get(key)
        if version <= self._floor or (current is not None and current[0] >= version):
            return
        if flag is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = (version, flag)
        self._publish_snapshot(version)

    def _publish_snapshot(self, version: int) -> None:
        flags = {key: flag for key, (_, flag) in self._entries.items()}
        self._snapshot = FlagSnapshot.of(flags, max(version, self._snapshot.version))

    async def _seed_if_empty(self) -> None:
        if await self._redis.exists(self._counter):
            return
        for flag in self.seed.values():
            with contextlib.suppress(ConflictError):
                await self.put(flag, None, who="seed", action="seed")
        log.info("seeded redis flag store with %d flags", len(self.seed))

    # -- reads and writes against Redis -----------------------------------------------------

    async def get(self, key: str) -> Flag | None:
        """The flag as Redis holds it now."""
        try:
            raw = await self._redis.get(self._prefix + key)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis flag store unreachable: {exc}") from exc
        if raw is None:
            return None
        entry = self._decode(key, raw)
        if entry is None:
            raise FlagValidationError(f"flag {key!r} in redis is unusable (see the log)")
        return entry[1]

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        try:
            result: list[Any] = await script(keys=keys, args=args)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis flag store unreachable, nothing changed: {exc}") from exc
        return result

    def _before(self, key: str, raw: str | None) -> Flag | None:
        entry = None if raw is None else self._decode(key, raw)
        return None if entry is None else entry[1]

    async def put(
        self,
        flag: Flag,
        expected_version: int | None,
        *,
        who: str,
        action: AuditAction | None = None,
    ) -> Flag:
        """Create or replace a flag if the stored version is still `expected_version`."""
        validate_pools(flag, self._pools)
        stored = flag.replace(version=1 if expected_version is None else expected_version + 1)
        expected = "" if expected_version is None else str(expected_version)
        ok, *rest = await self._run(
            self._put_script,
            [self._prefix + flag.key, self._counter],
            [expected, stored.model_dump_json(), self.channel, flag.key],
        )
        if not ok:
            actual = None if rest[0] is None else int(rest[0])
            if expected_version is not None and actual is None:
                raise FlagNotFound(flag.key)
            raise ConflictError(flag.key, expected_version, actual)
        store_version, raw_before = int(rest[0]), rest[1] if len(rest) > 1 else None
        before = self._before(flag.key, raw_before)
        self._apply(flag.key, store_version, stored)  # read your own write at once
        emit_audit(
            self._on_audit,
            AuditRecord(
                who=who,
                action=action or ("create" if before is None else "update"),
                flag_key=flag.key,
                before=before,
                after=stored,
                time=datetime.now(UTC),
                store_version=store_version,
            ),
        )
        return stored

    async def delete(self, key: str, expected_version: int, *, who: str) -> None:
        """Remove a flag if it is still at `expected_version`."""
        ok, *rest = await self._run(
            self._delete_script,
            [self._prefix + key, self._counter],
            [str(expected_version), self.channel, key],
        )
        if not ok:
            if rest[0] is None:
                raise FlagNotFound(key)
            raise ConflictError(key, expected_version, int(rest[0]))
        store_version, raw_before = int(rest[0]), rest[1] if len(rest) > 1 else None
        self._apply(key, store_version, None)
        emit_audit(
            self._on_audit,
            AuditRecord(
                who=who,
                action="delete",
                flag_key=key,
                before=self._before(key, raw_before),
                after=None,
                time=datetime.now(UTC),
                store_version=store_version,
            ),
        )
