"""One record Kafka can never take, of each error class, stalls nothing (tansu on loopback).

tansu neither enforces a topic's max.message.bytes nor has ACLs, and it never answers a
produce with an invalid-topic, invalid-record, no-leader or timeout error code. Those
classes come from FakeBrokerFaults: a stand-in that wraps the real producer (still talking
to tansu) and fails the chosen records' futures with the error kafka-python would report.
Everything else here is real: the size limit (kafka-python's own client-side check), an
illegal topic name, a key that cannot be encoded, and a timeout (the broker paused).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import typer
from typer.testing import CliRunner

from cli.events import register
from feedback.config import EventsConfig, KafkaConfig, SpoolConfig
from feedback.emitter import EventPipeline, open_pipeline
from feedback.schema import (
    AUDIT_TOPIC,
    COMPLETIONS_TOPIC,
    FEEDBACK_TOPIC,
    SCHEMA_DIR,
    RequestContent,
    ResponseContent,
    to_json,
)
from feedback.sinks import faults
from feedback.sinks.base import Record, RecordsRejected, SinkUnavailable
from feedback.sinks.kafka import KafkaSink, load_kafka_client
from feedback.sinks.kafka_process import KafkaProcessSink
from feedback.sinks.spool import DEAD_LETTER, Spool
from tests.integration.test_events_kafka import read_all
from tests.support.kafka import TansuBroker, started_broker
from tests.unit.feedback.events import completion, feedback
from tests.unit.feedback.test_pipeline import until

TOPICS = [COMPLETIONS_TOPIC, FEEDBACK_TOPIC, AUDIT_TOPIC]
# Where the producer runs (events.kafka.producer): a child process, or a thread of this one.
PRODUCERS = pytest.mark.parametrize("producer", ["process", "thread"])
SCHEMA = orjson.loads((SCHEMA_DIR / "completion.json").read_bytes())
MIB = 1024 * 1024


# One in-memory tansu broker for the module; tests use their own response ids.
broker = pytest.fixture(started_broker, scope="module", name="broker")


def kafka(broker: TansuBroker, **changes: Any) -> KafkaConfig:
    settings: dict[str, Any] = {
        "bootstrap_servers": [broker.bootstrap],
        "partitions": 2,
        "send_timeout_s": 3.0,
        "connect_timeout_s": 1.0,
        "retry_backoff_s": 0.1,
        "retry_backoff_max_s": 0.5,
    }
    return KafkaConfig(**{**settings, **changes})


def events_config(tmp_path: Path, broker: TansuBroker, **changes: Any) -> EventsConfig:
    """Sealing off: these tests are about the Kafka sink's own cutting of plain content
    (sealed content is cut before sealing: tests/unit/privacy, test_events_kafka.py)."""
    spool = SpoolConfig(dir=tmp_path / "spool")
    return EventsConfig(
        kafka=kafka(broker, **changes),
        spool=spool,
        batch_max=50,
        linger_s=0,
        privacy={"seal": False},
    )


def huge(response_id: str) -> Any:
    """A completion of 2.9 MB: a 1.5 MB question and a 1.4 MB answer."""
    request = RequestContent(messages=[{"role": "user", "content": "q" * 1_500_000}])
    return completion(response_id, request=request, response=ResponseContent(text="a" * 1_400_000))


def uncuttable(response_id: str) -> Any:
    """A completion over 1 MiB made of 40,000 short messages: no string cut makes it fit."""
    many = [{"role": "user", "content": "hi"} for _ in range(40_000)]
    return completion(response_id, request=RequestContent(messages=many))


def small(prefix: str, n: int) -> list[Any]:
    return [
        completion(f"lg1.{prefix}{i}.m") if i % 2 else feedback(f"lg1.{prefix}{i}.m")
        for i in range(n)
    ]


def ours(broker: TansuBroker, prefix: str) -> dict[str, Any]:
    """Records on the broker whose key starts with lg1.<prefix>, by event id."""
    found = {}
    for record in read_all(broker.bootstrap, TOPICS):
        if record.key.decode().startswith(f"lg1.{prefix}"):
            found[orjson.loads(record.value)["event_id"]] = record
    return found


def dead_letters(tmp_path: Path) -> list[bytes]:
    lines: list[bytes] = []
    for folder in (tmp_path / "spool").glob(f"*/{DEAD_LETTER}"):
        for segment in sorted(folder.glob("*.jsonl")):
            lines += segment.read_bytes().splitlines()
    return lines


def run(config: EventsConfig, events: list[Any], done: Callable[[EventPipeline], bool]) -> Any:
    async def main() -> EventPipeline:
        async with open_pipeline(config, "gw") as pipeline:
            for event in events:
                pipeline.emit(event)
            await until(lambda: done(pipeline), within=60)
        return pipeline

    return asyncio.run(main())


# -- the size limit: cut to fit, or set aside -----------------------------------------------


@PRODUCERS
def test_an_event_over_the_size_limit_is_cut_to_fit_and_everything_behind_it_flows(
    tmp_path: Path, broker: TansuBroker, producer: str
) -> None:
    prefix = f"sz-{producer}-"
    before, after = small(f"{prefix}a", 5), small(f"{prefix}b", 5)
    poison = huge(f"lg1.{prefix}poison.m")
    events = [*before, poison, *after]
    config = events_config(tmp_path, broker, producer=producer)
    pipeline = run(config, events, lambda p: p.stats.sent == len(events))
    assert pipeline.stats.truncated == {COMPLETIONS_TOPIC: 1}
    assert (pipeline.stats.dropped, pipeline.stats.dead_lettered) == (0, {})
    arrived = ours(broker, prefix)
    assert set(arrived) == {str(e.event_id) for e in events}
    record = arrived[str(poison.event_id)]
    assert len(record.value) <= MIB
    event = orjson.loads(record.value)
    jsonschema.validate(event, SCHEMA)
    content = event["body"]["request"]["messages"][0]["content"]
    assert re.search(r"\[truncated by loopgate: 1500000 bytes\]$", content)
    assert event["body"]["response"]["text"].endswith("[truncated by loopgate: 1400000 bytes]")
    headers = dict(record.headers)
    assert headers["loopgate-truncated"] == str(len(to_json(poison))).encode()
    assert "loopgate-truncated" not in dict(arrived[str(after[0].event_id)].headers)


@PRODUCERS
def test_a_spool_stuck_behind_poison_lines_replays_past_them(
    tmp_path: Path, broker: TansuBroker, producer: str
) -> None:
    """The state a gateway before this fix left behind: its replay retried the head forever."""
    p = f"st-{producer}-"
    events = [*small(f"{p}a", 4), huge(f"lg1.{p}cut.m"), uncuttable(f"lg1.{p}dead.m"),
              *small(f"{p}b", 4)]  # fmt: skip
    config = events_config(tmp_path, broker, producer=producer)
    spool = Spool.open(config.spool.dir, "gw", config.spool.segment_bytes, config.spool.max_bytes)
    spool.append([to_json(e) for e in events])
    spool.close()

    def replayed(pipeline: EventPipeline) -> bool:
        return pipeline.mode == "direct" and pipeline.snapshot().spool_pending_bytes == 0

    pipeline = run(config, [], replayed)
    assert pipeline.stats.replayed == len(events) - 1
    assert pipeline.stats.truncated == {COMPLETIONS_TOPIC: 1}
    assert pipeline.stats.dead_lettered == {(COMPLETIONS_TOPIC, faults.TOO_LARGE): 1}
    assert pipeline.stats.dropped == 0
    arrived = ours(broker, p)
    assert set(arrived) == {str(e.event_id) for e in events} - {str(events[5].event_id)}
    assert dead_letters(tmp_path) == [to_json(events[5])]  # kept whole, as it was spooled


# -- what the client itself refuses, against the real broker --------------------------------


@pytest.mark.parametrize(
    ("poison", "reason"),
    [
        (Record("bad topic!", "lg1.k.m", b"{}"), faults.INVALID_TOPIC),
        (Record(COMPLETIONS_TOPIC, "lg1.\ud800.m", b"{}"), faults.UNSERIALISABLE),
    ],
    ids=["invalid_topic", "unserialisable_key"],
)
@PRODUCERS
def test_a_record_the_client_refuses_is_reported_and_the_rest_delivered(
    broker: TansuBroker, poison: Record, reason: str, producer: str
) -> None:
    prefix = f"cl-{producer}-{reason}"
    good = [Record(e.topic, e.key, to_json(e)) for e in small(prefix, 4)]
    batch = [*good[:2], poison, *good[2:]]

    async def main() -> RecordsRejected:
        sink = (
            KafkaProcessSink(kafka(broker)) if producer == "process" else KafkaSink(kafka(broker))
        )
        try:
            with pytest.raises(RecordsRejected) as caught:
                await sink.emit(batch)
            return caught.value
        finally:
            await sink.aclose()

    rejected = asyncio.run(main()).delivery.rejected
    assert [(r.index, r.reason) for r in rejected] == [(2, reason)]
    assert rejected[0].record is batch[2]  # the caller's own record, for the dead-letter spool
    arrived = ours(broker, prefix)
    assert {r.value for r in arrived.values()} == {r.value for r in good}


# -- what only a broker answers: a stand-in for the classes tansu never produces ------------


class _FailedFuture:
    """A produce future the way kafka-python leaves it after the broker's error."""

    is_done = True

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def failed(self) -> bool:
        return True


class FakeBrokerFaults:
    """Stand-in: the real producer (to tansu), except records `fault` picks fail with its error."""

    def __init__(self, real: Any, fault: Callable[[bytes], BaseException | None]) -> None:
        self.real = real
        self.fault = fault

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any) -> Any:
        error = self.fault(value)
        if error is not None:
            return _FailedFuture(error)
        return self.real.send(topic, key=key, value=value, headers=headers)

    def flush(self, timeout: float) -> None:
        self.real.flush(timeout=timeout)

    def close(self, timeout: float) -> None:
        self.real.close(timeout=timeout)


class KafkaSinkWithFakeBrokerFaults(KafkaSink):
    """The production sink, its producer wrapped in FakeBrokerFaults."""

    def __init__(self, config: KafkaConfig, fault: Callable[[bytes], BaseException | None]):
        super().__init__(config)
        self.fault = fault

    def _connect(self) -> Any:
        return FakeBrokerFaults(super()._connect(), self.fault)


def _error(name: str) -> type[BaseException]:
    load_kafka_client()
    import kafka.errors

    error: type[BaseException] = getattr(kafka.errors, name)
    return error


def _poisoned(value: bytes) -> bool:
    return b"lg1.bf-poison" in value


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("InvalidTopicError", faults.INVALID_TOPIC),
        ("TopicAuthorizationFailedError", faults.UNAUTHORIZED),
        ("InvalidRecordError", faults.INVALID_RECORD),
        ("CorruptRecordError", faults.INVALID_RECORD),
        ("UnknownError", faults.REJECTED),  # unclassified, but its neighbours got through
    ],
)
def test_a_record_the_broker_refuses_for_good_is_set_aside(
    tmp_path: Path, broker: TansuBroker, error: str, reason: str
) -> None:
    prefix = f"bf-{error}"
    events = [*small(prefix, 3), completion("lg1.bf-poison.m"), *small(prefix + "x", 3)]

    def fault(value: bytes) -> BaseException | None:
        return _error(error)() if _poisoned(value) else None

    config = events_config(tmp_path, broker)
    assert config.kafka is not None
    sink = KafkaSinkWithFakeBrokerFaults(config.kafka, fault)

    async def main() -> EventPipeline:
        async with open_pipeline(config, "gw", primary=sink) as pipeline:
            for event in events:
                pipeline.emit(event)
            await until(lambda: pipeline.stats.sent == len(events) - 1, within=60)
        return pipeline

    pipeline = asyncio.run(main())
    assert pipeline.stats.dead_lettered == {(COMPLETIONS_TOPIC, reason): 1}
    assert pipeline.mode == "direct"  # nothing stalled, nothing went to the spool
    assert (pipeline.stats.dropped, pipeline.stats.spooled) == (0, 0)
    assert set(ours(broker, prefix)) == {str(e.event_id) for e in events if e is not events[3]}
    # Set aside as it would have gone to Kafka (redacted), for a later re-drive.
    assert [orjson.loads(line)["event_id"] for line in dead_letters(tmp_path)] == [
        str(events[3].event_id)
    ]


@pytest.mark.parametrize(
    "error",
    [
        "LeaderNotAvailableError",
        "NotLeaderForPartitionError",
        "RequestTimedOutError",
        "KafkaTimeoutError",
        "NotEnoughReplicasError",
        "BrokerNotAvailableError",
    ],
)
def test_a_transient_error_is_retried_without_loss(
    tmp_path: Path, broker: TansuBroker, error: str
) -> None:
    prefix = f"tr-{error}"
    events = [*small(prefix, 3), completion("lg1.bf-poison.m"), *small(prefix + "x", 3)]
    failures = [3]  # the poison fails three sends, then the "leader" is back

    def fault(value: bytes) -> BaseException | None:
        if _poisoned(value) and failures[0] > 0:
            failures[0] -= 1
            return _error(error)()
        return None

    config = events_config(tmp_path, broker)
    assert config.kafka is not None
    sink = KafkaSinkWithFakeBrokerFaults(config.kafka, fault)

    def delivered(pipeline: EventPipeline) -> bool:
        return pipeline.mode == "direct" and pipeline.stats.replayed > 0

    async def main() -> EventPipeline:
        async with open_pipeline(config, "gw", primary=sink) as pipeline:
            for event in events:
                pipeline.emit(event)
            await until(lambda: delivered(pipeline), within=60)
        return pipeline

    pipeline = asyncio.run(main())
    assert failures == [0]
    assert pipeline.stats.failed >= 3  # retried: through the spool, with backoff
    assert (pipeline.stats.dropped, pipeline.stats.dead_lettered) == (0, {})
    arrived = ours(broker, prefix) | ours(broker, "bf-poison")
    assert {str(e.event_id) for e in events} <= set(arrived)


@PRODUCERS
def test_a_broker_that_stops_answering_times_out_and_nothing_is_lost(
    tmp_path: Path, restartable_kafka: TansuBroker, producer: str
) -> None:
    """A real timeout: the broker process is paused (SIGSTOP) under a send, then resumed."""
    broker = restartable_kafka
    events = small("to-", 20)
    config = events_config(tmp_path, broker, send_timeout_s=1.0, producer=producer)

    async def main() -> EventPipeline:
        async with open_pipeline(config, "gw") as pipeline:
            pipeline.emit(events[0])
            await until(lambda: pipeline.stats.sent == 1, within=30)  # connected, topics made
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                for event in events[1:]:
                    pipeline.emit(event)
                await until(lambda: pipeline.stats.failed >= 1, within=30)
                assert pipeline.mode == "spooling"
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            await until(
                lambda: pipeline.mode == "direct" and pipeline.stats.replayed >= 19, within=60
            )
        return pipeline

    pipeline = asyncio.run(main())
    assert (pipeline.stats.dropped, pipeline.stats.dead_lettered) == (0, {})
    assert set(ours(broker, "to-")) == {str(e.event_id) for e in events}


def test_a_broker_limit_below_ours_halves_the_record_until_it_fits(
    tmp_path: Path, broker: TansuBroker
) -> None:
    """A topic created elsewhere with a smaller max.message.bytes than the producer's."""
    limit = 100_000
    events = [huge("lg1.bl-poison.m"), *small("bl-", 3)]

    def fault(value: bytes) -> BaseException | None:
        return _error("MessageSizeTooLargeError")() if len(value) > limit else None

    config = events_config(tmp_path, broker)
    assert config.kafka is not None
    sink = KafkaSinkWithFakeBrokerFaults(config.kafka, fault)

    async def main() -> EventPipeline:
        async with open_pipeline(config, "gw", primary=sink) as pipeline:
            for event in events:
                pipeline.emit(event)
            await until(lambda: pipeline.stats.sent == len(events), within=60)
        return pipeline

    pipeline = asyncio.run(main())
    assert pipeline.stats.truncated == {COMPLETIONS_TOPIC: 1}
    arrived = ours(broker, "bl-")
    record = arrived[str(events[0].event_id)]
    assert limit // 2 < len(record.value) <= limit  # halved until under the broker's limit
    jsonschema.validate(orjson.loads(record.value), SCHEMA)


def test_an_unclassified_error_on_a_lone_record_is_the_clusters_not_the_records(
    broker: TansuBroker,
) -> None:
    poison = completion("lg1.bf-poison.m")
    record = Record(poison.topic, poison.key, to_json(poison))
    sink = KafkaSinkWithFakeBrokerFaults(
        kafka(broker), lambda value: _error("UnknownError")() if _poisoned(value) else None
    )

    async def main() -> None:
        try:
            with pytest.raises(SinkUnavailable):  # retried later, not set aside
                await sink.emit([record])
        finally:
            await sink.aclose()

    asyncio.run(main())


# -- the CLI's replay moves past them too -----------------------------------------------------


def test_events_replay_moves_past_poison_records(tmp_path: Path, broker: TansuBroker) -> None:
    events = [*small("cr-a", 2), huge("lg1.cr-cut.m"), uncuttable("lg1.cr-dead.m"),
              *small("cr-b", 2)]  # fmt: skip
    root = tmp_path / "spool"
    spool = Spool.open(root, "gw", 16 * MIB, 1024 * MIB)
    spool.append([to_json(e) for e in events])
    spool.close()

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test root."""

    register(app)
    result = CliRunner().invoke(
        app, ["events", "replay", "--spool", str(root), "--kafka", broker.bootstrap]
    )
    assert result.exit_code == 0, result.output
    assert "replayed 5 events" in result.output
    assert "1 Kafka can never take" in result.output
    arrived = ours(broker, "cr-")
    assert set(arrived) == {str(e.event_id) for e in events} - {str(events[3].event_id)}
    assert dead_letters(tmp_path) == [to_json(events[3])]
    again = CliRunner().invoke(
        app, ["events", "replay", "--spool", str(root), "--kafka", broker.bootstrap]
    )
    assert "replayed 0 events" in again.output
    # The re-drive docs/events.md gives: the dead-letter folder is a spool folder too.
    dead = root / "gw" / DEAD_LETTER
    redrive = CliRunner().invoke(
        app, ["events", "replay", "--spool", str(dead), "--kafka", broker.bootstrap]
    )
    assert redrive.exit_code == 0, redrive.output
    assert "replayed 0 events" in redrive.output  # still too large: set aside again
    assert "1 Kafka can never take" in redrive.output
    (line,) = (dead / DEAD_LETTER / "0000000000000001.jsonl").read_bytes().splitlines()
    assert line == to_json(events[3])
