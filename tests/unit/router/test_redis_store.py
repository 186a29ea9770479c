"""Redis store against real Redis: shared flags, optimistic writes, fail static, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from router.config import FlagsConfig
from router.errors import ConflictError, FlagNotFound, StoreUnavailable
from router.model import Flag
from router.stores import AuditRecord, RedisFlagStore, open_store
from tests.support.redis import RedisServer
from tests.unit.router.conftest import POOLS, make_flag

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _store(
    url: str, namespace: str, on_audit: Callable[[AuditRecord], None] = lambda r: None, **kw: Any
) -> AsyncIterator[RedisFlagStore]:
    options: dict[str, Any] = {"socket_timeout": 0.5, "reconnect_max_delay": 0.2, **kw}
    async with RedisFlagStore.open(url, POOLS, on_audit, namespace=namespace, **options) as store:
        yield store


async def _eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check` held; fails after `within`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        assert loop.time() - start < within, f"condition not met within {within}s"
        await asyncio.sleep(0.01)
    return loop.time() - start


def _version(store: RedisFlagStore, key: str = "support-bot") -> int | None:
    flag = store.snapshot().get(key)
    return None if flag is None else flag.version


async def test_a_change_through_one_replica_reaches_the_other_within_a_second(
    redis_url: str, redis_namespace: str
) -> None:
    records: list[AuditRecord] = []
    async with (
        _store(redis_url, redis_namespace, records.append) as one,
        _store(redis_url, redis_namespace) as two,
    ):
        assert len(one.snapshot()) == len(two.snapshot()) == 0
        created = await one.put(make_flag(), None, who="ana")
        assert _version(one) == 1  # the writer reads its own write at once
        await _eventually(lambda: _version(two) == 1, within=1.0)

        killed = await two.put(created.replace(killed=True), 1, who="bob", action="kill")
        await _eventually(lambda: _version(one) == 2, within=1.0)
        flag = one.snapshot().get("support-bot")
        assert flag is not None
        assert flag == killed
        assert flag.killed
        assert one.snapshot().version == two.snapshot().version

        await one.delete("support-bot", 2, who="ana")
        await _eventually(lambda: _version(two) is None, within=1.0)
        assert await two.get("support-bot") is None

    assert [(r.action, r.who) for r in records] == [("create", "ana"), ("delete", "ana")]
    assert records[1].before == killed


async def test_stale_writes_are_refused(redis_url: str, redis_namespace: str) -> None:
    async with _store(redis_url, redis_namespace) as store:
        flag = await store.put(make_flag(), None, who="ana")
        await store.put(flag.with_weights({"canary": 50}), 1, who="ana")
        with pytest.raises(ConflictError, match="you stated version 1, the store has version 2"):
            await store.put(flag.replace(killed=True), 1, who="bob")
        with pytest.raises(ConflictError, match="you stated no flag, the store has version 2"):
            await store.put(flag, None, who="bob")
        with pytest.raises(ConflictError):
            await store.delete("support-bot", 1, who="bob")
        with pytest.raises(FlagNotFound):
            await store.put(make_flag("ghost"), 3, who="bob")
        with pytest.raises(FlagNotFound):
            await store.delete("ghost", 1, who="bob")
        stored = await store.get("support-bot")
        assert stored is not None
        assert (stored.version, stored.killed) == (2, False)


async def test_concurrent_writers_one_wins(redis_url: str, redis_namespace: str) -> None:
    async with _store(redis_url, redis_namespace) as a, _store(redis_url, redis_namespace) as b:
        flag = await a.put(make_flag(), None, who="a")
        results = await asyncio.gather(
            *(
                s.put(flag.with_weights({"canary": w}), 1, who=str(w))
                for s, w in ((a, 20), (b, 30), (a, 40), (b, 50))
            ),
            return_exceptions=True,
        )
        assert sum(isinstance(r, Flag) for r in results) == 1
        assert sum(isinstance(r, ConflictError) for r in results) == 3


async def test_unusable_entries_are_skipped_and_layout_is_documented(
    redis_url: str, redis_namespace: str
) -> None:
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with _store(redis_url, redis_namespace, resync_interval=0.1) as store:
            await store.put(make_flag(), None, who="ana")
            envelope = json.loads(await raw.get(f"{redis_namespace}:flag:support-bot") or "{}")
            assert envelope["flag"]["key"] == "support-bot"
            assert int(await raw.get(f"{redis_namespace}:flags:version") or 0) == 1
            await raw.set(f"{redis_namespace}:flag:broken", "{not json")
            await asyncio.sleep(0.3)  # a few re-reads
            assert set(store.snapshot().flags) == {"support-bot"}
            assert store.staleness_seconds() == 0.0
    finally:
        await raw.aclose()


async def test_an_empty_store_is_seeded_from_the_file(redis_url: str, redis_namespace: str) -> None:
    config = FlagsConfig(
        source="redis", redis_url=redis_url, namespace=redis_namespace, seed_from_file=True
    )
    records: list[AuditRecord] = []
    async with open_store(config, {"policy-a", "policy-b"}, records.append) as store:
        assert set(store.snapshot().flags) == {"support-bot"}
    assert [(r.action, r.who) for r in records] == [("seed", "seed")]
    # Once written, Redis is the source of truth: no second seeding.
    async with open_store(config, {"policy-a", "policy-b"}, records.append) as store:
        assert set(store.snapshot().flags) == {"support-bot"}
    assert len(records) == 1


async def test_redis_away_serves_the_last_flags_and_recovers(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    url = redis_server.url
    async with _store(url, redis_namespace) as writer, _store(url, redis_namespace) as reader:
        flag = await writer.put(make_flag(), None, who="ana")
        await _eventually(lambda: _version(reader) == 1, within=1.0)
        assert reader.staleness_seconds() == 0.0

        redis_server.stop()
        await _eventually(lambda: reader.staleness_seconds() > 0, within=2.0)
        first = reader.staleness_seconds()
        await asyncio.sleep(0.3)
        assert reader.staleness_seconds() > first  # the gauge grows while Redis is away
        assert _version(reader) == 1  # and the last flags keep serving
        with pytest.raises(StoreUnavailable, match="nothing changed"):
            await writer.put(flag.replace(killed=True), 1, who="ana")
        with pytest.raises(StoreUnavailable):
            await reader.get("support-bot")

        redis_server.start()
        await _eventually(lambda: reader.staleness_seconds() == 0.0, within=3.0)
        await _eventually(lambda: writer.staleness_seconds() == 0.0, within=3.0)
        await writer.put(flag.replace(killed=True), 1, who="ana")
        await _eventually(lambda: _version(reader) == 2, within=1.0)
        killed = reader.snapshot().get("support-bot")
        assert killed is not None
        assert killed.killed


async def test_starting_without_redis_serves_nothing_and_catches_up(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    redis_server.stop()
    async with _store(redis_server.url, redis_namespace, socket_timeout=0.2) as store:
        assert len(store.snapshot()) == 0
        assert store.staleness_seconds() > 0
        redis_server.start()
        await _eventually(lambda: store.staleness_seconds() == 0.0, within=3.0)
        await store.put(make_flag(), None, who="ana")
        assert _version(store) == 1


async def test_leaving_the_store_with_redis_frozen_does_not_hang(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    # A gateway shutting down while its Redis is stuck (SIGSTOP: connections open, nothing
    # answers) must still get out; the store bounds its teardown by the socket timeout.
    process = redis_server.process
    assert process is not None
    try:
        async with asyncio.timeout(10):
            async with _store(redis_server.url, redis_namespace, resync_interval=0.1) as store:
                await _eventually(lambda: store.staleness_seconds() == 0.0, within=2.0)
                process.send_signal(signal.SIGSTOP)
                await asyncio.sleep(0.6)  # a re-read is now waiting on the frozen server
    finally:
        process.send_signal(signal.SIGCONT)  # so the fixture can end it
