"""Key stores (files, Redis) and the pipeline's sealing, on a real spool and a real Redis."""

from __future__ import annotations

import asyncio
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from feedback.config import EventsConfig, SpoolConfig
from feedback.emitter import open_pipeline
from feedback.privacy import ERASED, open_event
from feedback.privacy.config import PrivacyConfig
from feedback.privacy.file_store import FileKeyStore
from feedback.privacy.keys import KeyCache, KeyStoreError
from feedback.privacy.redis_store import RedisKeyReader, RedisKeyStore
from feedback.privacy.sealer import Sealer
from feedback.privacy.stores import forget_unit, key_reader
from feedback.redact import Redactor
from feedback.schema import PlainEvent, to_json
from feedback.scrub import scrub_json
from feedback.sinks.spool import SEGMENT_SUFFIX
from tests.support.ports import free_port
from tests.unit.feedback.events import completion

ALICE, BOB = "a" * 32, "b" * 32


def cache() -> KeyCache:
    return KeyCache(1000, 60)


def test_file_store_makes_one_durable_key_per_unit_and_forgets_it(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys", cache())
    first = asyncio.run(store.keys_for([ALICE]))[ALICE]
    path = tmp_path / "keys" / "aa" / f"{ALICE}.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other_worker = FileKeyStore(tmp_path / "keys", cache())
    assert other_worker.unit_key(ALICE) == first
    with ThreadPoolExecutor(8) as pool:  # workers racing on a new unit agree on one key
        made = list(pool.map(lambda _: FileKeyStore(tmp_path / "keys", cache())
                             .get_or_create(BOB), range(16)))  # fmt: skip
    assert len({key.kid for key in made}) == 1
    assert list((tmp_path / "keys" / "bb").iterdir()) == [tmp_path / "keys" / "bb" / f"{BOB}.key"]
    assert asyncio.run(store.forget(ALICE)) is True
    assert asyncio.run(store.forget(ALICE)) is False
    assert not path.exists()
    assert FileKeyStore(tmp_path / "keys", cache()).unit_key(ALICE) is None
    with pytest.raises(ValueError, match="not a unit hash"):
        store.get_or_create("../../etc/passwd")


def test_a_forget_reaches_every_replica_through_redis(redis_url: str, redis_namespace: str) -> None:
    async def main() -> None:
        a = RedisKeyStore(redis_url, redis_namespace, cache())
        b = RedisKeyStore(redis_url, redis_namespace, cache())
        b.listen()
        try:
            made = await a.keys_for([ALICE, BOB])
            assert (await b.keys_for([ALICE]))[ALICE] == made[ALICE]  # one key for all
            assert b.cache.lookup(ALICE) == (True, made[ALICE])
            await asyncio.sleep(0.2)  # b's subscription is up
            assert await a.forget(ALICE) is True
            async with asyncio.timeout(5):
                while b.cache.lookup(ALICE)[0]:  # noqa: ASYNC110 - the cache signals nothing
                    await asyncio.sleep(0.01)
            again = await b.keys_for([ALICE])  # new traffic gets a new key
            assert again[ALICE].kid != made[ALICE].kid
        finally:
            await a.aclose()
            await b.aclose()
        reader = RedisKeyReader(redis_url, redis_namespace, cache())
        try:
            assert reader.unit_key(BOB) == made[BOB]
            assert reader.forget_now(BOB) is True
            assert RedisKeyReader(redis_url, redis_namespace, cache()).unit_key(BOB) is None
        finally:
            reader.close()

    asyncio.run(main())


def test_without_a_key_store_content_is_withheld_not_sent_in_clear() -> None:
    async def main() -> None:
        down = RedisKeyStore(f"redis://127.0.0.1:{free_port()}/0", "ns", cache(), timeout_s=0.5)
        sealer = Sealer(down, retry_after_s=60)
        event = completion(text="secret-text", unit_hash=ALICE)
        seal = await sealer.prepare([event])
        data = orjson.loads(to_json(event))
        seal(data)
        assert b"secret" not in orjson.dumps(data)
        assert data["body"]["request"]["messages"] is None
        assert data["body"]["usage"]["total_tokens"] == 12  # metadata still goes out
        assert (sealer.stats.withheld, sealer.stats.store_errors) == (1, 1)
        await sealer.prepare([event])  # within retry_after_s the store is not asked again
        assert sealer.stats.store_errors == 1
        await down.aclose()

    asyncio.run(main())


def _plain(event: Any) -> PlainEvent:
    data = event.model_dump()
    return PlainEvent(event.type, event.topic, event.key, data)


def _spooled(root: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted(root.rglob(f"*{SEGMENT_SUFFIX}"))
            for line in path.read_bytes().splitlines()]  # fmt: skip


def test_the_pipeline_seals_what_it_spools_and_forgetting_erases_one_unit(tmp_path: Path) -> None:
    config = EventsConfig(spool=SpoolConfig(dir=tmp_path / "var" / "spool"))
    sent = [completion(f"lg1.{i}.m", text=f"secret-{i}", unit_hash=(ALICE, BOB)[i % 2])
            for i in range(10)]  # fmt: skip

    async def main() -> None:
        async with open_pipeline(config, "gw") as pipeline:
            for event in sent:  # both forms the gateway emits
                pipeline.emit(_plain(event) if event.body.response_id < "lg1.5" else event)
        assert pipeline.sealer is not None
        assert pipeline.sealer.stats.sealed == 10

    asyncio.run(main())
    lines = _spooled(tmp_path / "var" / "spool")
    assert len(lines) == 10
    assert b"secret-" not in orjson.dumps(lines)
    keys = key_reader(config.privacy, config.spool.dir)  # var/keys, beside the spool
    assert (tmp_path / "var" / "keys").is_dir()
    redactor = Redactor.from_config(config.redaction)  # what the pipeline did before sealing
    originals = {str(e.event_id): orjson.loads(scrub_json(e, redactor)[0]) for e in sent}
    assert [open_event(line, keys) for line in lines] == [originals[e["event_id"]] for e in lines]

    assert forget_unit(config.privacy, config.spool.dir, ALICE)
    fresh = key_reader(config.privacy, config.spool.dir)
    for line in lines:
        opened = open_event(line, fresh)
        if line["body"]["unit_hash"] == ALICE:
            assert opened["erased"] is True
            assert opened["body"]["response"]["text"] == ERASED
        else:
            assert opened == originals[line["event_id"]]


def test_sealing_can_be_turned_off(tmp_path: Path) -> None:
    config = EventsConfig(
        spool=SpoolConfig(dir=tmp_path / "spool"), privacy=PrivacyConfig(seal=False)
    )

    async def main() -> None:
        async with open_pipeline(config, "gw") as pipeline:
            pipeline.emit(completion(text="plain-text"))
        assert pipeline.sealer is None

    asyncio.run(main())
    assert b"plain-text" in orjson.dumps(_spooled(tmp_path / "spool"))


def test_a_damaged_key_file_is_an_error_not_an_erased_unit(tmp_path: Path) -> None:
    FileKeyStore(tmp_path, cache()).get_or_create(ALICE)
    (tmp_path / "aa" / f"{ALICE}.key").write_bytes(b"short")
    with pytest.raises(KeyStoreError, match="40 bytes"):
        FileKeyStore(tmp_path, cache()).unit_key(ALICE)
    assert FileKeyStore(tmp_path, cache()).unit_key("not-a-hash") is None


def test_a_key_about_to_expire_is_fetched_again_not_left_to_lapse(tmp_path: Path) -> None:
    now = [0.0]
    store = FileKeyStore(tmp_path, KeyCache(10_000, 60, clock=lambda: now[0]))
    sealer = Sealer(store)
    event = completion(unit_hash=ALICE)

    async def main() -> None:
        assert sealer.missing([event]) == {ALICE}
        await sealer.fetch({ALICE})
        assert sealer.missing([event]) == set()
        now[0] = 59.5  # half a second left: fetched again, and good for another minute
        assert sealer.missing([event]) == {ALICE}
        await sealer.fetch({ALICE})
        assert sealer.missing([event]) == set()

    asyncio.run(main())


def test_units_arriving_while_keys_are_fetched_are_sealed_never_withheld(tmp_path: Path) -> None:
    # New units keep arriving while the worker fetches the batch's keys (a file store fsyncs
    # each new key); a unit whose key was not fetched must wait for the next batch, not have
    # its content withheld. Shadows make this common: two events per unit, back to back.
    config = EventsConfig(spool=SpoolConfig(dir=tmp_path / "spool"))
    sent = [completion(f"lg1.{i}.m", text=f"secret-{i}", unit_hash=f"{i:064x}") for i in range(300)]

    async def main() -> None:
        async with open_pipeline(config, "gw") as pipeline:
            for event in sent:
                pipeline.emit(event)
                await asyncio.sleep(0.0005)
        assert pipeline.sealer is not None
        assert (pipeline.sealer.stats.withheld, pipeline.sealer.stats.sealed) == (0, 300)

    asyncio.run(main())
    assert len(_spooled(tmp_path / "spool")) == 300
