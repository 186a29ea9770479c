"""Kafka source on a real broker: a build that crashes mid-read resumes from committed offsets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from feedback.datasets.build import BuildConfig, build
from feedback.datasets.join import JoinStats, parse_lines
from feedback.datasets.sources import EventLog, KafkaSource
from feedback.schema import COMPLETIONS_TOPIC, FEEDBACK_TOPIC, Event, to_json
from tests.support.kafka import TansuBroker
from tests.unit.datasets.events import completion, feedback

# kafka-python 3 calls importlib.resources.read_text (deprecated) when first imported, so
# it is imported inside the tests, where this mark applies.
pytestmark = pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning",
    "ignore:open_text is deprecated:DeprecationWarning",
)

KINDS = ["thumbs_up", "thumbs_down", "edit", "accept", "reject", "rating"]


def scenario() -> list[Event]:
    """40 answers over 8 units and 5 prompts, each with one or two pieces of feedback."""
    events: list[Event] = []
    for i in range(40):
        rid = f"r{i}"
        events.append(
            completion(rid, unit=f"{i % 8:032x}", prompt=f"p{i % 5}", text=f"answer {i % 7}",
                       variant=("control", "canary")[i % 2], at=i)
        )  # fmt: skip
        kind = KINDS[i % len(KINDS)]
        extra: dict[str, Any] = {"edited_text": f"better {i}"} if kind == "edit" else {}
        if kind == "rating":
            extra = {"value": float(1 + i % 5)}
        events.append(feedback(rid, kind, at=i + 5, **extra))
        if i % 3 == 0:
            events.append(feedback(rid, "thumbs_up", at=i + 9))
    return events


def publish(broker: TansuBroker, events: list[Event]) -> None:
    """Create both topics (3 partitions) and send every event keyed by its response id."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap])
    try:
        admin.create_topics([NewTopic(t, 3, 1) for t in (COMPLETIONS_TOPIC, FEEDBACK_TOPIC)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], acks="all", linger_ms=0)
    try:
        for event in events:
            producer.send(event.topic, key=event.key.encode(), value=to_json(event))
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


def built_from(log: EventLog) -> tuple[str, int]:
    """Content hash and distinct event count of a build over the whole local log."""
    stats = JoinStats()
    built = build(parse_lines(log.lines(), stats), BuildConfig(test_fraction=0.3), stats)
    return built.content_hash, stats.completions + stats.feedback


def test_resume_after_a_crash_gives_the_same_dataset(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    events = scenario()
    publish(kafka_broker, events)
    servers = [kafka_broker.bootstrap]

    whole = EventLog(tmp_path / "whole")
    full = KafkaSource(servers, group_id="ds-whole", idle_s=1.0).pull(whole)
    assert full.records == len(events)
    expected_hash, distinct = built_from(whole)
    assert distinct == len(events)
    assert expected_hash == build(events, BuildConfig(test_fraction=0.3)).content_hash

    resumed = EventLog(tmp_path / "resumed")
    source = KafkaSource(servers, group_id="ds-resumed", idle_s=1.0)
    crashed = source.pull(resumed, stop_after=37)
    assert crashed.stopped_early
    assert crashed.committed < 37  # the batch in hand was written, not committed
    rest = source.pull(resumed)
    assert not rest.stopped_early
    # Resumed from the committed offsets: only the uncommitted batch is read twice.
    assert rest.records == len(events) - crashed.committed
    assert built_from(resumed) == (expected_hash, len(events))
    # Nothing new: a third pull reads nothing and the dataset is unchanged.
    assert source.pull(resumed).records == 0
    assert built_from(resumed) == (expected_hash, len(events))
