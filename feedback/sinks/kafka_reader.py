"""Loopgate's topics read from outside the gateway: the last records, new ones, offsets.

No consumer group: partitions are assigned, nothing is committed, and a quick exit leaves no
group behind on the broker. kafka-python is imported when a reader opens, not at import.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any


class KafkaReadError(Exception):
    """The broker cannot be reached, or the topics asked for do not exist."""


def open_consumer(servers: list[str]) -> Any:
    """A group-less KafkaConsumer on the bootstrap servers."""
    from feedback.sinks.kafka import load_kafka_client

    load_kafka_client()
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        return KafkaConsumer(
            bootstrap_servers=servers,
            group_id=None,
            enable_auto_commit=False,
            client_id="loopgate-events-cli",
            request_timeout_ms=10_000,
        )
    except KafkaError as exc:
        raise KafkaReadError(f"cannot reach Kafka {servers}: {exc}") from exc


def partitions(consumer: Any, topics: list[str]) -> list[Any]:
    """Every partition of the topics that exist, in order."""
    from kafka import TopicPartition

    out = []
    for topic in topics:
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            out.append(TopicPartition(topic, partition))
    return out


def end_offsets(consumer: Any, parts: list[Any]) -> dict[Any, int]:
    """One past the last record of each partition, from a fetch's high watermark.

    tansu answers ListOffsets(latest) with the last *batch's* base offset plus one, short of
    the end when that batch holds several records; a fetch's high watermark is exact.
    """
    listed: dict[Any, int] = consumer.end_offsets(parts)
    begins: dict[Any, int] = consumer.beginning_offsets(parts)
    consumer.assign(parts)
    for part in parts:
        consumer.seek(part, max(begins[part], listed[part] - 1))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        consumer.highwater(p) is None for p in parts if listed[p] > begins[p]
    ):
        consumer.poll(timeout_ms=200)
    return {p: max(listed[p], consumer.highwater(p) or 0) for p in parts}


class TopicReader:
    """Records of some topics: the backlog up to the end seen at start, then new ones."""

    def __init__(self, servers: list[str], topics: list[str], *, wait: bool = False) -> None:
        self.servers, self.topics, self.wait = servers, topics, wait
        self._consumer: Any = None
        self._parts: list[Any] = []

    def __enter__(self) -> TopicReader:
        self._consumer = open_consumer(self.servers)
        self._parts = partitions(self._consumer, self.topics)
        if not self._parts and not self.wait:
            self._consumer.close()
            raise KafkaReadError(
                f"none of {', '.join(self.topics)} exists on {', '.join(self.servers)}"
            )
        while not self._parts:  # waiting for a gateway to create its topics
            time.sleep(1.0)
            self._parts = partitions(self._consumer, self.topics)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._consumer.close()

    def backlog(self, last: int | None) -> list[bytes]:
        """The last `last` records of each partition (all with None), by timestamp."""
        consumer, parts = self._consumer, self._parts
        ends = end_offsets(consumer, parts)
        begins = consumer.beginning_offsets(parts)
        for part in parts:
            start = begins[part] if last is None else max(begins[part], ends[part] - last)
            consumer.seek(part, start)
        found: list[tuple[int, str, int, bytes]] = []
        idle = 0
        # Up to the end offsets seen at start; a few empty polls end it (offset gaps).
        while idle < 6 and any(consumer.position(p) < ends[p] for p in parts):
            polled = consumer.poll(timeout_ms=500).values()
            idle = 0 if polled else idle + 1
            for batch in polled:
                found += [(r.timestamp, r.topic, r.offset, r.value) for r in batch]
        return [value for *_, value in sorted(found)]

    def poll(self) -> Iterator[bytes]:
        """Records that arrived since the last look (waits up to half a second)."""
        for batch in self._consumer.poll(timeout_ms=500).values():
            for record in batch:
                yield record.value


def topic_stats(servers: list[str], topics: list[str] | None) -> list[dict[str, Any]]:
    """Partitions, end offsets and record counts of each topic (all `loopgate.*` by default)."""
    consumer = open_consumer(servers)
    try:
        names = topics or sorted(t for t in consumer.topics() if t.startswith("loopgate."))
        rows = []
        for topic in names:
            parts = partitions(consumer, [topic])
            begins = consumer.beginning_offsets(parts) if parts else {}
            ends = end_offsets(consumer, parts) if parts else {}
            rows.append({
                "topic": topic,
                "partitions": len(parts),
                "end_offsets": {str(p.partition): ends[p] for p in parts},
                "records": sum(ends[p] - begins[p] for p in parts),
            })  # fmt: skip
        return rows
    finally:
        consumer.close()
