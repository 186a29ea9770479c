"""EventPipeline with an in-memory primary sink: order, failover to the spool, replay, bounds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feedback.config import EventsConfig, KafkaConfig, SpoolConfig
from feedback.emitter import EventPipeline, open_pipeline
from feedback.schema import FeedbackEvent, ResponseContent
from feedback.sinks.memory import MemorySink
from tests.unit.feedback.events import completion, feedback


def config(tmp_path: Path, **changes: Any) -> EventsConfig:
    spool = changes.pop("spool", SpoolConfig(dir=tmp_path / "spool"))
    kafka = KafkaConfig(
        bootstrap_servers=["127.0.0.1:1"], retry_backoff_s=0.02, retry_backoff_max_s=0.1
    )
    return EventsConfig(spool=spool, kafka=kafka, **changes)


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    """Poll `check` until true; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling stats the pipeline does not signal
            await asyncio.sleep(0.01)


def workload(n: int, keys: int = 7) -> list[Any]:
    """Completions and feedback interleaved over a few response ids."""
    return [
        completion(f"lg1.r{i % keys}.m", text=str(i))
        if i % 2
        else feedback(f"lg1.r{i % keys}.m", comment=str(i))
        for i in range(n)
    ]


def arrived_in_order(sink: MemorySink, sent: list[Any]) -> None:
    """Every event arrived (dedupe by event_id), and per key in the order emitted."""
    first_seen: dict[str, int] = {}
    for index, event in enumerate(sink.events()):
        first_seen.setdefault(str(event.event_id), index)
    assert set(first_seen) == {str(e.event_id) for e in sent}
    by_key: dict[str, list[str]] = {}
    for event in sent:
        by_key.setdefault(event.key, []).append(str(event.event_id))
    for key, ids in by_key.items():
        positions = [first_seen[i] for i in ids]
        assert positions == sorted(positions), f"key {key} out of order"


def test_direct_delivery_keyed_redacted(tmp_path: Path) -> None:
    async def main() -> None:
        sink = MemorySink()
        async with open_pipeline(config(tmp_path), "gw", primary=sink) as pipeline:
            events = workload(50)
            events.append(completion("lg1.x.m", response=ResponseContent(text="mail a@b.io")))
            for event in events:
                pipeline.emit(event)
            await until(lambda: len(sink.records) == len(events))
            assert pipeline.mode == "direct"
            assert pipeline.stats.findings == {"email": 1}
        assert [r.key for r in sink.records] == [e.key for e in events]
        assert [r.topic for r in sink.records] == [e.topic for e in events]
        assert b"a@b.io" not in sink.records[-1].value
        assert sink.closed
        assert pipeline.stats.sent == len(events)
        assert pipeline.stats.dropped == 0

    asyncio.run(main())


def test_without_kafka_the_spool_is_the_sink(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = EventsConfig(spool=SpoolConfig(dir=tmp_path / "spool"))
        async with open_pipeline(cfg, "gw") as pipeline:
            assert pipeline.mode == "spooling"
            for event in workload(20):
                pipeline.emit(event)
        assert pipeline.stats.spooled == 20
        lines = b"".join(p.read_bytes() for p in (tmp_path / "spool" / "gw").glob("*.jsonl"))
        assert lines.count(b"\n") == 20

    asyncio.run(main())


def test_failure_spools_then_replays_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        sink = MemorySink()
        sink.failing = True
        async with open_pipeline(config(tmp_path), "gw", primary=sink) as pipeline:
            events = workload(300)
            for event in events[:150]:
                pipeline.emit(event)
                await asyncio.sleep(0)
            await until(lambda: pipeline.stats.spooled >= 150)
            assert pipeline.mode == "spooling"
            sink.failing = False
            for event in events[150:]:
                pipeline.emit(event)
                await asyncio.sleep(0)
            await until(lambda: pipeline.mode == "direct" and len(sink.records) >= 300)
            snap = pipeline.snapshot()
            assert snap.spool_pending_bytes == 0
            assert snap.stats.replayed >= 150
            assert snap.stats.failed >= 1
        arrived_in_order(sink, events)
        assert pipeline.stats.dropped == 0

    asyncio.run(main())


def test_queue_full_goes_to_the_spool_not_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        sink = MemorySink()
        sink.delay = 0.05  # a slow broker
        cfg = config(tmp_path, queue_size=5, batch_max=5)
        async with open_pipeline(cfg, "gw", primary=sink) as pipeline:
            events = workload(200)
            for event in events:
                pipeline.emit(event)  # no awaits: the queue overflows at once
            assert pipeline.mode == "spooling"
            await until(lambda: pipeline.stats.spooled > 0)
            await until(lambda: pipeline.mode == "direct", within=20)
        assert pipeline.stats.dropped == 0
        arrived_in_order(sink, events)

    asyncio.run(main())


def test_spool_full_drops_with_counter_and_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> EventPipeline:
        sink = MemorySink()
        sink.failing = True
        spool = SpoolConfig(dir=tmp_path / "spool", segment_bytes=4096, max_bytes=16384)
        async with open_pipeline(config(tmp_path, spool=spool), "gw", primary=sink) as pipeline:
            for event in workload(200):
                pipeline.emit(event)  # never raises, never blocks
                await asyncio.sleep(0)
            await until(lambda: pipeline.stats.refused > 0)
            snap = pipeline.snapshot()
            assert snap.spool_bytes <= 16384
        return pipeline

    with caplog.at_level(logging.ERROR, logger="feedback.emitter"):
        pipeline = asyncio.run(main())
    stats = pipeline.stats
    assert stats.refused > 0
    assert stats.dropped == stats.refused
    assert stats.spooled + stats.refused == 200
    assert "is full" in caplog.text


def test_close_spools_what_kafka_will_not_take_and_next_start_replays_first(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        sink = MemorySink()
        sink.failing = True
        events = workload(60)
        cfg = config(tmp_path, drain_timeout_s=2.0)
        async with open_pipeline(cfg, "gw", primary=sink) as pipeline:
            for event in events[:40]:
                pipeline.emit(event)
        assert pipeline.stats.spooled == 40
        sink.failing = False
        async with open_pipeline(cfg, "gw", primary=sink) as pipeline:
            assert pipeline.mode == "spooling"  # the backlog goes first
            for event in events[40:]:
                pipeline.emit(event)
            await until(lambda: pipeline.mode == "direct" and len(sink.records) >= 60)
        arrived_in_order(sink, events)

    asyncio.run(main())


def test_emit_after_close_is_counted(tmp_path: Path) -> None:
    async def main() -> EventPipeline:
        async with open_pipeline(config(tmp_path), "gw", primary=MemorySink()) as pipeline:
            pass
        pipeline.emit(feedback())
        return pipeline

    assert asyncio.run(main()).stats.dropped == 1


def test_consent_none_event_carries_no_text(tmp_path: Path) -> None:
    async def main() -> None:
        sink = MemorySink()
        async with open_pipeline(config(tmp_path), "gw", primary=sink) as pipeline:
            pipeline.emit(completion(text="very private words", consent="none"))
            pipeline.emit(feedback(consent="none", edited_text="private edit", comment="private"))
            await until(lambda: len(sink.records) == 2)
        for record in sink.records:
            assert b"private" not in record.value
        assert isinstance(sink.events()[1], FeedbackEvent)

    asyncio.run(main())


def test_a_batch_failing_during_close_is_spooled_not_dropped(tmp_path: Path) -> None:
    async def main() -> EventPipeline:
        sink = MemorySink()
        sink.failing, sink.delay = True, 0.3  # the send fails only after close has begun
        async with open_pipeline(config(tmp_path), "gw", primary=sink) as pipeline:
            for event in workload(50):
                pipeline.emit(event)
            await asyncio.sleep(0.05)
        return pipeline

    stats = asyncio.run(main()).stats
    assert (stats.spooled, stats.dropped) == (50, 0)


def test_a_batch_still_being_prepared_for_the_spool_is_not_stranded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replayer must not go back to direct mode while the spooler holds a batch.

    The spooler's redaction yields to the loop; while it does, the buffer looks empty. Here
    that moment is held open on purpose: the batch is held in _prepare until the replayer
    has emptied the spool. Before the fix, the pipeline went direct then, and the held batch
    landed in a spool that nothing replays any more.
    """
    gate: list[asyncio.Event] = []
    prepare = EventPipeline._prepare

    async def held(self: EventPipeline, items: list[Any], waiting: Any) -> Any:
        if waiting is self._spool_buf and gate:
            await gate[0].wait()
        return await prepare(self, items, waiting)

    monkeypatch.setattr(EventPipeline, "_prepare", held)

    async def main() -> None:
        sink = MemorySink()
        sink.failing = True
        async with open_pipeline(config(tmp_path, linger_s=0), "gw", primary=sink) as pipeline:
            first, second = completion("lg1.first.m"), completion("lg1.second.m")
            pipeline.emit(first)
            await until(lambda: pipeline.stats.spooled == 1 and pipeline.stats.failed >= 2)
            gate.append(asyncio.Event())
            pipeline.emit(second)  # spooling: to the buffer, then held in _prepare
            await until(lambda: not pipeline.snapshot().spool_buffer_depth)
            sink.failing = False
            try:
                await until(lambda: pipeline.stats.replayed == 1)
                await asyncio.sleep(0.5)  # the replayer's idle checks run meanwhile
                assert pipeline.mode == "spooling"
            finally:
                gate[0].set()  # never leave the spooler held: close would wait for it
            await until(lambda: pipeline.mode == "direct" and len(sink.records) == 2)
            assert pipeline.snapshot().spool_pending_bytes == 0
            assert [e.key for e in sink.events()] == [first.key, second.key]

    asyncio.run(main())


@pytest.mark.parametrize("inflight", [True, False])
def test_room_is_exactly_what_emit_takes_before_it_drops(tmp_path: Path, inflight: bool) -> None:
    """room() counts the queue and the batch in flight as a failure would move them to the
    spool buffer: emitting room() events drops none, the next one is dropped."""

    async def main() -> EventPipeline:
        sink = MemorySink()
        sink.delay = 30.0  # a broker that never answers in this test: the batch stays in flight
        cfg = config(tmp_path, queue_size=5, spool_buffer=12, batch_max=3, linger_s=0)
        async with open_pipeline(cfg, "gw", primary=sink) as pipeline:
            assert pipeline.room() == 12
            if inflight:
                for event in workload(3):
                    pipeline.emit(event)
                await until(lambda: not pipeline.snapshot().queue_depth)  # taken by the sender
                assert pipeline.room() == 9
            room = pipeline.room()
            for event in workload(room):  # no awaits: nothing drains meanwhile
                pipeline.emit(event)
                assert pipeline.room() >= 0
            assert pipeline.mode == "spooling"
            assert pipeline.room() == 0
            assert pipeline.backlogged()
            assert pipeline.stats.dropped == 0
            pipeline.emit(workload(1)[0])
            assert pipeline.stats.dropped == 1
            sink.delay = 0
        return pipeline

    pipeline = asyncio.run(main())
    assert pipeline.room() == 0  # closed


def test_backlogged_keeps_the_last_tenth_for_completions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        sink = MemorySink()
        sink.delay = 30.0
        cfg = config(tmp_path, queue_size=100, spool_buffer=100, batch_max=500, linger_s=0.5)
        async with open_pipeline(cfg, "gw", primary=sink) as pipeline:
            events = workload(91)
            for event in events[:89]:
                pipeline.emit(event)
            assert pipeline.room() == 11
            assert not pipeline.backlogged()
            pipeline.emit(events[89])
            assert pipeline.room() == 10
            assert pipeline.backlogged()
            sink.delay = 0

    with caplog.at_level(logging.WARNING, logger="feedback.emitter"):
        asyncio.run(main())
    assert "refusing feedback (503)" in caplog.text


class _BuggySink(MemorySink):
    """A sink whose emit raises something other than SinkError (a client library's bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.bugs = 2

    async def emit(self, records: Any) -> None:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug in the sink")
        await super().emit(records)


def test_a_sink_bug_does_not_end_the_replay(tmp_path: Path) -> None:
    async def main() -> None:
        sink = _BuggySink()
        async with open_pipeline(config(tmp_path), "gw", primary=sink) as pipeline:
            events = workload(20)
            for event in events:
                pipeline.emit(event)
            # The sender's batch fails (spooled), the first replay fails too; the next one
            # delivers: the replayer lived through an exception that is not a SinkError.
            await until(lambda: pipeline.stats.replayed >= 20, within=20)
            assert pipeline.mode == "direct"
        assert pipeline.stats.dropped == 0
        arrived_in_order(sink, events)

    asyncio.run(main())
