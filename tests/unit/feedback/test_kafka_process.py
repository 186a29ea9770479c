"""The Kafka producer in a child process (events.kafka.producer: process), against tansu.

What the gateway relies on: a child that crashes or hangs loses no event (its batch is
spooled and replayed, a fresh child takes over), the child never outlives the gateway, and
the pipeline sees the same deliveries and rejections as with the producer on a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import uvloop

from feedback.config import EventsConfig, KafkaConfig, SpoolConfig
from feedback.emitter import EventPipeline, open_pipeline
from feedback.schema import COMPLETIONS_TOPIC, to_json
from feedback.sinks import faults, kafka_process
from feedback.sinks.base import Delivery, Record, RecordsRejected, SinkUnavailable
from feedback.sinks.kafka import KafkaSink
from feedback.sinks.kafka_process import (
    MODULE,
    KafkaProcessSink,
    decode_reply,
    encode_batch,
    encode_delivery,
    encode_unavailable,
    reply_bound,
)
from tests.integration.test_events_kafka import read_all
from tests.support.kafka import TansuBroker, started_broker
from tests.unit.feedback.events import completion, feedback
from tests.unit.feedback.test_pipeline import until
from tests.unit.feedback.test_pipeline_kafka import TOPICS, settled
from tests.unit.feedback.test_poison_kafka import huge, small

T = TypeVar("T")


# One in-memory tansu broker for the module's tests that need no broker of their own.
broker = pytest.fixture(started_broker, scope="module", name="broker")


def kafka(broker: TansuBroker, **changes: Any) -> KafkaConfig:
    settings: dict[str, Any] = {
        "bootstrap_servers": [broker.bootstrap],
        "partitions": 3,
        "send_timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "retry_backoff_s": 0.2,
        "retry_backoff_max_s": 1.0,
    }
    return KafkaConfig(**{**settings, **changes})


def events_config(tmp_path: Path, broker: TansuBroker, **changes: Any) -> EventsConfig:
    return EventsConfig(
        kafka=kafka(broker, **changes), spool=SpoolConfig(dir=tmp_path / "spool"), batch_max=50
    )


# The gateway serves on uvloop (its own subprocess support); tests elsewhere use asyncio's.
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper that is not us counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_gone(pid: int, within: float) -> None:
    deadline = time.monotonic() + within
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {within}s"
        time.sleep(0.05)


def producer_children(parent: int) -> list[int]:
    """Live children of `parent` running the producer module."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        # `-m feedback.sinks.kafka_process`, as benchmarks find it.
        running = fields[0] != "Z" and f"\0-m\0{MODULE}\0".encode() in cmdline
        if int(fields[1]) == parent and running:
            found.append(int(entry))
    return found


def kafka_threads() -> list[str]:
    """Threads of this process that belong to a Kafka producer."""
    return [t.name for t in threading.enumerate() if "kafka" in t.name.lower()]


# -- the wire format ------------------------------------------------------------------------


def test_a_reply_is_rebuilt_with_the_callers_own_records() -> None:
    records = [Record("t", f"k{i}", b"{}") for i in range(3)]
    delivery = Delivery((0,), ())
    assert decode_reply(encode_delivery(delivery), records) == delivery
    with pytest.raises(SinkUnavailable, match="no broker"):
        decode_reply(encode_unavailable("no broker"), records)
    wire = pickle.dumps(("ok", [], [(2, faults.TOO_LARGE, "does not fit")]))
    (rejection,) = decode_reply(wire, records).rejected
    assert rejection.record is records[2]
    assert pickle.loads(encode_batch(records)) == [("t", f"k{i}", b"{}") for i in range(3)]


@pytest.mark.parametrize(
    "body",
    [
        b"not a pickle",
        pickle.dumps(("ok", [3], [])),  # no record 3 in a batch of 3
        pickle.dumps(("ok", [], [(0, 1, "x")])),
        pickle.dumps(("maybe",)),
        pickle.dumps(ValueError("an exception is never sent")),
    ],
)
def test_a_reply_the_child_never_writes_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the sink turns any of them into SinkUnavailable
        decode_reply(body, [Record("t", f"k{i}", b"{}") for i in range(3)])


# -- the same contract as the thread sink -----------------------------------------------------


def test_a_batch_with_rejected_and_cut_records_gives_what_the_thread_sink_gives(
    broker: TansuBroker,
) -> None:
    def batch(producer: str) -> list[Record]:
        events = small(f"same-{producer}-", 4)
        cut = huge(f"lg1.same-{producer}-cut.m")
        good = [Record(e.topic, e.key, to_json(e)) for e in events]
        return [
            good[0],
            Record("bad topic!", "lg1.k.m", b"{}"),
            good[1],
            Record(cut.topic, cut.key, to_json(cut)),
            Record(COMPLETIONS_TOPIC, "lg1.\ud800.m", b"{}"),
            *good[2:],
        ]

    async def emit(sink: KafkaSink | KafkaProcessSink, records: list[Record]) -> RecordsRejected:
        try:
            with pytest.raises(RecordsRejected) as caught:
                await sink.emit(records)
            return caught.value
        finally:
            await sink.aclose()

    thread_batch, process_batch = batch("thread"), batch("process")
    by_thread = asyncio.run(emit(KafkaSink(kafka(broker)), thread_batch))
    by_process = asyncio.run(emit(KafkaProcessSink(kafka(broker)), process_batch))
    assert str(by_process) == str(by_thread)
    expected = by_thread.delivery
    assert expected.truncated == (3,)
    assert [(r.index, r.reason) for r in expected.rejected] == [
        (1, faults.INVALID_TOPIC),
        (4, faults.UNSERIALISABLE),
    ]
    got = by_process.delivery
    assert got.truncated == expected.truncated
    assert [(r.index, r.reason, r.detail) for r in got.rejected] == [
        (r.index, r.reason, r.detail) for r in expected.rejected
    ]
    # The parent's own records, exactly as given, for the dead-letter spool.
    assert all(r.record is process_batch[r.index] for r in got.rejected)


# -- faults of the child ------------------------------------------------------------------------


@LOOPS
def test_a_child_killed_mid_load_loses_nothing_and_a_fresh_one_takes_over(
    tmp_path: Path, kafka_broker: TansuBroker, loop: str
) -> None:
    config = events_config(tmp_path, kafka_broker)
    assert config.kafka is not None
    sink = KafkaProcessSink(config.kafka)
    killed: list[int] = []
    events: list[Any] = []

    async def load(pipeline: EventPipeline) -> None:
        # ~1,000 events/s on 9 keys, until the third kill and for at least 300 events.
        for i in itertools.count():
            if len(killed) >= 3 and i >= 300:
                return
            key = f"lg1.r{i % 9}.m"
            event = completion(key, text=str(i)) if i % 2 else feedback(key, comment=str(i))
            pipeline.emit(event)
            events.append(event)
            if i % 10 == 9:
                await asyncio.sleep(0.01)

    def delivered(pipeline: EventPipeline) -> int:
        return pipeline.stats.sent + pipeline.stats.replayed

    async def kill_children(pipeline: EventPipeline) -> None:
        for _ in range(3):  # three times, each once the child has sent something
            before = delivered(pipeline)
            await until(lambda: sink.pid is not None and sink.pid not in killed, within=30)
            await until(lambda b=before: delivered(pipeline) > b, within=30)
            pid = sink.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    async def main() -> EventPipeline:
        async with open_pipeline(config, "gw", primary=sink) as pipeline:
            await asyncio.gather(load(pipeline), kill_children(pipeline))
            await settled(pipeline, len(events))
            stats = pipeline.stats
            # A fresh child serves what comes after the last kill.
            late = [feedback(f"lg1.late{i}.m") for i in range(20)]
            for event in late:
                pipeline.emit(event)
            sent = stats.sent
            await until(lambda: stats.sent >= sent + len(late), within=30)
            events.extend(late)
            assert sink.pid not in (None, *killed)
            assert pipeline.snapshot().producer_restarts == sink.restarts >= 3
        return pipeline

    pipeline = run_on(loop, main())
    assert pipeline.stats.dropped == 0
    assert pipeline.stats.failed >= 1  # at least one kill hit a batch in flight
    assert all(gone(pid) for pid in killed)
    arrived = {orjson.loads(r.value)["event_id"] for r in read_all(kafka_broker.bootstrap, TOPICS)}
    missing = {str(e.event_id) for e in events} - arrived
    assert not missing, f"{len(missing)} of {len(events)} events lost"


@LOOPS
def test_a_child_that_died_between_batches_fails_one_batch_and_is_replaced(
    broker: TansuBroker, loop: str
) -> None:
    """Killed while idle: the loop has seen its pipes close before the next batch comes."""
    records = [Record(e.topic, e.key, to_json(e)) for e in small(f"idle-{loop}-", 4)]
    sink = KafkaProcessSink(kafka(broker))

    async def main() -> None:
        try:
            await sink.emit(records)
            first = sink.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0.5)
            with pytest.raises(SinkUnavailable, match="producer process failed"):
                await sink.emit(records)
            assert sink.pid is None
            await sink.emit(records)  # a fresh child
            assert sink.pid not in (None, first)
            assert sink.restarts == 1
        finally:
            await sink.aclose()

    run_on(loop, main())


@LOOPS
def test_a_child_that_hangs_is_killed_after_the_bound_and_its_batch_spooled(
    tmp_path: Path, kafka_broker: TansuBroker, loop: str
) -> None:
    config = events_config(tmp_path, kafka_broker, send_timeout_s=0.3, connect_timeout_s=0.3)
    assert config.kafka is not None
    sink = KafkaProcessSink(config.kafka)
    bound = reply_bound(config.kafka)
    events = small("hang-", 12)

    async def main() -> tuple[EventPipeline, float]:
        async with open_pipeline(config, "gw", primary=sink) as pipeline:
            pipeline.emit(events[0])
            await until(lambda: pipeline.stats.sent == 1, within=30)
            stopped = sink.pid
            assert stopped is not None
            os.kill(stopped, signal.SIGSTOP)  # alive, holding the pipe, answering nothing
            started = time.monotonic()
            for event in events[1:]:
                pipeline.emit(event)
            await until(lambda: pipeline.stats.failed >= 1, within=bound + 10)
            waited = time.monotonic() - started
            assert pipeline.mode == "spooling"
            assert gone(stopped)  # killed and reaped before the batch was given up
            await until(lambda: pipeline.mode == "direct", within=30)
        return pipeline, waited

    pipeline, waited = run_on(loop, main())
    assert bound - 0.5 <= waited <= bound + 5
    assert (pipeline.stats.dropped, pipeline.stats.spooled) == (0, len(events) - 1)
    assert pipeline.stats.replayed == len(events) - 1
    assert sink.restarts == 1
    arrived = {orjson.loads(r.value)["event_id"] for r in read_all(kafka_broker.bootstrap, TOPICS)}
    assert arrived == {str(e.event_id) for e in events}


@LOOPS
def test_aclose_leaves_no_child_behind(broker: TansuBroker, loop: str) -> None:
    records = [Record(e.topic, e.key, to_json(e)) for e in small("close-", 4)]
    sink = KafkaProcessSink(kafka(broker))

    async def main() -> int:
        await sink.emit(records)
        pid = sink.pid
        assert pid is not None
        assert producer_children(os.getpid()) == [pid]
        await sink.aclose()
        await sink.aclose()  # idempotent
        with pytest.raises(SinkUnavailable):
            await sink.emit(records)
        return pid

    pid = run_on(loop, main())
    assert not Path(f"/proc/{pid}").exists()  # exited and reaped: no zombie
    assert producer_children(os.getpid()) == []


@LOOPS
def test_a_batch_cancelled_in_flight_kills_the_child_and_the_next_batch_gets_a_fresh_one(
    broker: TansuBroker, loop: str
) -> None:
    """As at shutdown when the drain times out: the late answer must not answer another batch."""
    records = [Record(e.topic, e.key, to_json(e)) for e in small(f"cancel-{loop}-", 4)]
    sink = KafkaProcessSink(kafka(broker))

    async def main() -> int:
        try:
            await sink.emit(records)
            stuck = sink.pid
            assert stuck is not None
            os.kill(stuck, signal.SIGSTOP)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sink.emit(records), 0.5)
            assert sink.pid is None
            await sink.emit(records)
            assert sink.pid not in (None, stuck)
            return stuck
        finally:
            await sink.aclose()

    stuck = run_on(loop, main())
    assert gone(stuck)
    assert producer_children(os.getpid()) == []


_PARENT = """
import asyncio, sys, time
from feedback.config import KafkaConfig
from feedback.sinks.base import Record
from feedback.sinks.kafka_process import KafkaProcessSink

async def main():
    sink = KafkaProcessSink(KafkaConfig(bootstrap_servers=[sys.argv[1]], partitions=2))
    await sink.emit([Record("loopgate.completions.v1", "lg1.orphan.m", b"{}")])
    print(sink.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_the_child_exits_when_the_gateway_process_dies(broker: TansuBroker) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT), broker.bootstrap],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert producer_children(parent.pid) == [child]
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
    wait_gone(child, within=5)


def test_a_child_that_cannot_start_fails_the_batch_not_the_pipeline(
    broker: TansuBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No interpreter to start (or no descriptors left): the warm start only logs, every
    batch is spooled as Kafka unavailable, nothing is dropped, and the pipeline closes."""
    monkeypatch.setattr(kafka_process, "child_command", lambda: [str(tmp_path / "no-python")])

    async def main() -> EventPipeline:
        async with open_pipeline(events_config(tmp_path, broker), "gw") as pipeline:
            for n in range(20):
                pipeline.emit(completion(f"lg1.r{n}.m", text=str(n)))
            await until(lambda: pipeline.stats.spooled >= 20, within=20)
        return pipeline

    pipeline = asyncio.run(main())
    assert pipeline.stats.dropped == 0
    assert pipeline.stats.failed >= 1
