"""EventPipeline against a real Kafka-protocol broker (tansu on loopback)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from feedback.config import EventsConfig, KafkaConfig, SpoolConfig
from feedback.emitter import EventPipeline, open_pipeline
from feedback.schema import COMPLETIONS_TOPIC, FEEDBACK_TOPIC, SCHEMA_DIR
from feedback.sinks.base import EventSink, Record
from feedback.sinks.kafka import KafkaSink
from feedback.sinks.kafka_process import KafkaProcessSink
from tests.support.kafka import TansuBroker, consume_all
from tests.unit.feedback.test_pipeline import until, workload

TOPICS = [COMPLETIONS_TOPIC, FEEDBACK_TOPIC]
# Where the producer runs (events.kafka.producer): a child process, or a thread of this one.
PRODUCERS = pytest.mark.parametrize("producer", ["process", "thread"])


def kafka_config(tmp_path: Path, broker: TansuBroker, producer: str = "process") -> EventsConfig:
    kafka = KafkaConfig(
        bootstrap_servers=[broker.bootstrap],
        partitions=3,
        send_timeout_s=2.0,
        connect_timeout_s=1.0,
        retry_backoff_s=0.2,
        retry_backoff_max_s=1.0,
        producer=producer,  # type: ignore[arg-type]
    )
    return EventsConfig(kafka=kafka, spool=SpoolConfig(dir=tmp_path / "spool"), batch_max=100)


def kafka_sink(config: KafkaConfig) -> KafkaSink | KafkaProcessSink:
    """The sink open_pipeline would build for this config."""
    return KafkaProcessSink(config) if config.producer == "process" else KafkaSink(config)


class AckLog:
    """Wraps the Kafka sink and notes which event ids the broker acknowledged, and when."""

    def __init__(self, inner: EventSink) -> None:
        self.inner = inner
        self.acked: list[tuple[float, str]] = []

    async def emit(self, records: Sequence[Record]) -> None:
        await self.inner.emit(records)
        now = time.monotonic()
        self.acked += [(now, orjson.loads(r.value)["event_id"]) for r in records]

    async def aclose(self) -> None:
        await self.inner.aclose()


async def settled(pipeline: EventPipeline, count: int) -> None:
    """Until `count` events were sent or spooled, the spool replayed, and Kafka direct again."""
    stats = pipeline.stats
    await until(
        lambda: (
            stats.sent + stats.spooled >= count
            and pipeline.mode == "direct"
            and not pipeline.snapshot().spool_pending_bytes
        ),
        within=60,
    )


def first_occurrences(records: list[Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Consumed events deduped by event_id, and duplicates seen."""
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        event = orjson.loads(record.value)
        assert record.key.decode() == (event["body"]["response_id"])
        seen.setdefault(event["event_id"], {**event, "_partition": record.partition,
                                            "_offset": record.offset})  # fmt: skip
    return list(seen.values()), {}


def assert_key_order(consumed: list[dict[str, Any]], emitted: list[Any]) -> None:
    """For each key, the consumed events (first occurrences) follow the emission order."""
    rank = {str(e.event_id): i for i, e in enumerate(emitted)}
    by_key: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for event in consumed:
        key = (event["body"]["response_id"], event["_partition"])
        by_key.setdefault(key, []).append((event["_offset"], rank[event["event_id"]]))
    partitions_per_key: dict[str, set[int]] = {}
    for (key, partition), items in by_key.items():
        partitions_per_key.setdefault(key, set()).add(partition)
        ranks = [r for _, r in sorted(items)]
        assert ranks == sorted(ranks), f"{key} out of order"
    assert all(len(p) == 1 for p in partitions_per_key.values())  # one key, one partition


@PRODUCERS
def test_events_reach_kafka_keyed_in_order_and_valid(
    tmp_path: Path, kafka_broker: TansuBroker, producer: str
) -> None:
    events = workload(400)
    config = kafka_config(tmp_path, kafka_broker, producer)

    async def main() -> EventPipeline:
        async with open_pipeline(config, "gw") as pipeline:
            for event in events:
                pipeline.emit(event)
            await until(lambda: pipeline.stats.sent == len(events), within=30)
            assert pipeline.mode == "direct"
            # The producer's CPU work is in a child process, or on a thread of this one.
            threads = [t for t in threading.enumerate() if t.name.startswith("loopgate-kafka")]
            assert bool(threads) == (producer == "thread")
        return pipeline

    pipeline = asyncio.run(main())
    assert pipeline.stats.spooled == 0
    records = consume_all(kafka_broker.bootstrap, TOPICS, len(events))
    consumed, _ = first_occurrences(records)
    assert len(records) == len(events)
    assert {e["event_id"] for e in consumed} == {str(e.event_id) for e in events}
    assert_key_order(consumed, events)
    schemas = {
        "completion": orjson.loads((SCHEMA_DIR / "completion.json").read_bytes()),
        "feedback": orjson.loads((SCHEMA_DIR / "feedback.json").read_bytes()),
    }
    for record in records:
        event = orjson.loads(record.value)
        assert record.topic == (
            COMPLETIONS_TOPIC if event["type"] == "completion" else FEEDBACK_TOPIC
        )
        jsonschema.validate(event, schemas[event["type"]])


@PRODUCERS
def test_broker_killed_mid_load_loses_nothing(
    tmp_path: Path, restartable_kafka: TansuBroker, producer: str
) -> None:
    broker = restartable_kafka
    events = workload(1200, keys=11)
    cfg = kafka_config(tmp_path, broker, producer)
    assert cfg.kafka is not None
    acks = AckLog(kafka_sink(cfg.kafka))
    killed_at: list[float] = []

    async def load(pipeline: EventPipeline) -> None:
        for index, event in enumerate(events):
            pipeline.emit(event)
            if index % 10 == 9:
                await asyncio.sleep(0.02)  # ~500 events/s for ~2.4 s, across the outage

    async def faults() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(broker.kill)
        killed_at.append(time.monotonic())
        await asyncio.sleep(3.5)  # longer than send_timeout_s: sends fail, events spool
        await asyncio.to_thread(broker.start)

    async def main() -> EventPipeline:
        async with open_pipeline(cfg, "gw", primary=acks) as pipeline:
            await asyncio.gather(load(pipeline), faults())
            await settled(pipeline, len(events))
        return pipeline

    pipeline = asyncio.run(main())
    stats = pipeline.stats
    assert stats.dropped == 0
    assert stats.emitted == len(events)
    assert stats.spooled > 0  # the outage did reach the spool
    assert stats.replayed > 0
    # The in-memory broker forgets what it acknowledged before it was killed: those events
    # were delivered by Kafka's contract (acks=all). Everything else must be on the new one.
    acked_by_old = {event_id for at, event_id in acks.acked if at < killed_at[0]}
    expected = {str(e.event_id) for e in events} - acked_by_old
    assert len(expected) > len(events) // 3
    records = consume_all(broker.bootstrap, TOPICS, len(expected))
    consumed, _ = first_occurrences(records)
    consumed_ids = {e["event_id"] for e in consumed}
    assert expected <= consumed_ids, f"{len(expected - consumed_ids)} events lost"
    assert_key_order(consumed, events)
