"""EventPipeline: a bounded queue off the request path, Kafka first, the spool when it fails.

Two modes. *direct*: `emit` puts events on the queue and the sender task sends batches to
the primary sink (Kafka). *spooling*: `emit` puts events on the spool buffer, the spooler
task writes them to the spool, and the replayer task re-sends the spool to Kafka in order;
when the spool is empty again the pipeline goes back to direct. A failed send, or a full
queue, switches to spooling, moving the unacknowledged batch and the whole queue into the
spool buffer first, so per-key order holds (a batch that was in flight may arrive twice:
delivery is at-least-once, `event_id` dedupes). Without Kafka the pipeline always spools.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from feedback.config import EventsConfig
from feedback.privacy.seal import sealable
from feedback.privacy.sealer import Sealer
from feedback.privacy.stores import key_store
from feedback.redact import Redactor
from feedback.schema import Event, PlainEvent
from feedback.scrub import scrub_json
from feedback.sinks.base import (
    Delivery,
    EventSink,
    Record,
    RecordsRejected,
    Rejection,
    SinkError,
    SpoolFull,
)
from feedback.sinks.kafka import KafkaSink
from feedback.sinks.kafka_process import KafkaProcessSink
from feedback.sinks.spool import DEAD_LETTER, SpoolSink, record_from_line

# Room left in a record for everything but the sealed content (ids, metadata, headers).
_METADATA_ROOM = 64 * 1024
# A spool-only gateway's events may be replayed to a Kafka with the default record limit.
_DEFAULT_RECORD_BYTES = 1024 * 1024

log = logging.getLogger(__name__)

Mode = Literal["direct", "spooling"]
# Events are prepared (redacted, serialised) on the event loop in slices, yielding to the
# requests between them. A slice is short while little waits: 64 at a time blocked the loop
# for ~0.5 ms every batch, most of the gateway's p99 at low load. It grows with what waits
# (a quarter of it), so under saturation the pipeline still keeps pace with the requests:
# fixed slices of 2 let the spool buffer overflow at 6,000 requests/s.
_MIN_SLICE = 4
_LOG_EVERY_S = 10.0  # repeated warnings (drops, refusals) are logged at most this often


@dataclass
class PipelineStats:
    """Counters since start (only the pipeline writes them); export as Prometheus counters."""

    emitted: int = 0  # accepted by emit()
    sent: int = 0  # acknowledged by the primary sink directly
    spooled: int = 0  # written to the spool
    replayed: int = 0  # re-sent from the spool to the primary sink
    failed: int = 0  # primary sink batch attempts that failed (sends and replays)
    dropped: int = 0  # lost: buffers full, spool refused, unserialisable, emitted after close
    refused: int = 0  # the part of `dropped` that the full spool refused
    corrupt: int = 0  # unreadable spool lines skipped on replay
    findings: dict[str, int] = field(default_factory=dict)  # redaction findings by category
    truncated: dict[str, int] = field(default_factory=dict)  # sent with content cut, by topic
    # Set aside in the dead-letter spool, by (topic, reason): Kafka can never take them.
    dead_lettered: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineSnapshot:
    """Counters plus gauges at one moment, for a metrics scrape or `events stats`."""

    stats: PipelineStats
    mode: Mode
    queue_depth: int
    spool_buffer_depth: int
    spool_bytes: int
    spool_pending_bytes: int
    spool_segments: int
    spool_max_bytes: int
    producer_restarts: int = 0  # Kafka producer processes started again after a fault


class EventPipeline:
    """Accepts events without blocking and gets them to Kafka or the spool, in order."""

    def __init__(
        self,
        config: EventsConfig,
        gateway: str,
        spool: SpoolSink,
        primary: EventSink | None,
        redactor: Redactor | None,
        dead_letter: SpoolSink | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self.config = config
        self.sealer = sealer  # content sealed per unit after redaction (feedback.privacy)
        self.gateway = gateway
        self.stats = PipelineStats()
        self._spool = spool
        self._primary = primary
        self._dead_letter = dead_letter
        self._redactor = redactor
        self._queue: deque[Event | PlainEvent] = deque()
        self._spool_buf: deque[Event | PlainEvent | Record] = deque()
        self._queue_ready = asyncio.Event()
        self._spool_ready = asyncio.Event()
        self._replay_wake = asyncio.Event()
        self._mode: Mode = "direct"
        if primary is None or spool.spool.pending_bytes > 0:
            # Without Kafka the spool is the sink; with a backlog it is replayed first.
            self._mode = "spooling"
        self._inflight: list[Record] | None = None
        self._inflight_spooled = False
        self._spool_writing = False
        self._closing = False  # sender and replayer stop
        self._spool_closing = False  # spooler stops, once nothing else can feed it
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_log: dict[str, float] = {}
        # Called with each record once redacted and serialised (the console's review queues).
        self.listeners: list[Callable[[Record], None]] = []

    @property
    def mode(self) -> Mode:
        """`direct` (queue -> Kafka) or `spooling` (buffer -> spool -> replay)."""
        return self._mode

    def snapshot(self) -> PipelineSnapshot:
        """Counters and gauges now."""
        spool = self._spool.spool
        return PipelineSnapshot(
            stats=self.stats,
            mode=self._mode,
            queue_depth=len(self._queue),
            spool_buffer_depth=len(self._spool_buf),
            spool_bytes=spool.total_bytes,
            spool_pending_bytes=spool.pending_bytes,
            spool_segments=spool.segments,
            spool_max_bytes=spool.max_bytes,
            producer_restarts=(
                self._primary.restarts if isinstance(self._primary, KafkaProcessSink) else 0
            ),
        )

    def room(self) -> int:
        """Events emit() takes now before it drops one: what the spool buffer has left once
        the queue and the batch in flight have moved there (as a failure would move them)."""
        if self._closed:
            return 0
        taken = len(self._spool_buf)
        if self._mode == "direct":
            taken += len(self._queue)
            if self._inflight is not None and not self._inflight_spooled:
                taken += len(self._inflight)
        return max(0, self.config.spool_buffer - taken)

    def backlogged(self) -> bool:
        """True when feedback should be refused (retryable) rather than risk being dropped.

        The last tenth of the room is kept for completion events, which cannot be refused:
        their answer has been given by the time they are emitted."""
        room = self.room()
        if room > self.config.spool_buffer // 10:
            return False
        self._warn("backlog", "events: %d events of room left; refusing feedback (503)", room)
        return True

    def start(self) -> None:
        """Start the named worker tasks."""
        if self._primary is not None:
            self._spawn(self._sender(), "loopgate-events-sender")
            self._spawn(self._replayer(), "loopgate-events-replayer")
            if isinstance(self._primary, KafkaProcessSink):
                # The child starts now, not with the first batch (~1 s of interpreter start).
                self._spawn(self._primary.warm(), "loopgate-events-warm")
        self._spawn(self._spooler(), "loopgate-events-spooler")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def emit(self, event: Event | PlainEvent) -> None:
        """Hand an event over; never blocks and never raises. Content is redacted later."""
        if self._closed:
            self._drop(1, "event emitted after the pipeline closed")
            return
        self.stats.emitted += 1
        if self._mode == "direct":
            if len(self._queue) < self.config.queue_size:
                self._queue.append(event)
                self._queue_ready.set()
                return
            self._warn(
                "queue", "event queue full (%d): spooling until Kafka catches up", len(self._queue)
            )
            self._enter_spooling()
        if len(self._spool_buf) < self.config.spool_buffer:
            self._spool_buf.append(event)
            self._spool_ready.set()
            return
        self._drop(1, "spool buffer full: the spool cannot keep up")

    def _enter_spooling(self, failed: list[Record] | None = None) -> None:
        # Everything not yet acknowledged goes to the spool, oldest first.
        if self._mode == "direct":
            log.warning("events: switching to the spool (Kafka failed or fell behind)")
        self._mode = "spooling"
        if failed is not None:
            self._spool_buf.extend(failed)
        elif self._inflight is not None and not self._inflight_spooled:
            self._spool_buf.extend(self._inflight)  # may also be acked: a duplicate, not a loss
            self._inflight_spooled = True
        self._spool_buf.extend(self._queue)
        self._queue.clear()
        self._spool_ready.set()
        self._replay_wake.set()

    def _warn(self, what: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(what, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log[what] = now
            log.warning(message, *args)

    def _drop(self, count: int, why: str) -> None:
        self.stats.dropped += count
        now = time.monotonic()
        if now - self._last_log.get("drop", -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log["drop"] = now
            log.error("events dropped (%d so far): %s", self.stats.dropped, why)

    async def _linger(self, waiting: deque[Any], closing: bool) -> None:
        """Let a batch gather before writing it, unless it is full or we are closing."""
        if self.config.linger_s and not closing and len(waiting) < self.config.batch_max:
            await asyncio.sleep(self.config.linger_s)

    async def _keys_ready(self, waiting: deque[Any], size: int) -> int:
        """Fetch the content keys of the next batch while it still waits in the deque (so
        a switch to the spool meanwhile moves it, in order); taking it is then immediate.

        Returns how many of the first items to take: those whose keys were checked or
        fetched. Items that arrived during the last fetch wait for the next batch rather than
        have their content withheld for want of a key."""
        count = min(len(waiting), size)
        sealer = self.sealer
        if sealer is None:
            return count
        for _ in range(3):  # units may arrive while it fetches; a few rounds, not forever
            count = min(len(waiting), size)
            missing = sealer.missing(itertools.islice(waiting, count))
            if not missing:
                return count
            await sealer.fetch(missing)
        return count

    async def _prepare(
        self, items: list[Event | PlainEvent | Record], waiting: Sized
    ) -> list[Record]:
        records: list[Record] = []
        seal = self.sealer.hook(items) if self.sealer is not None else None
        cut_before = self.sealer.stats.truncated if self.sealer is not None else 0
        in_slice = 0
        for index, item in enumerate(items):
            if in_slice >= max(_MIN_SLICE, (len(items) - index + len(waiting)) // 4):
                await asyncio.sleep(0)  # redaction is CPU work: let requests run between slices
                in_slice = 0
            in_slice += 1
            if isinstance(item, Record):
                records.append(item)
                continue
            unsealed: list[bytes] = []
            try:
                if self.listeners and seal is not None:
                    # Listeners (the console's review queues) work in process on the redacted
                    # content: they get it as it was just before sealing.
                    data, found = scrub_json(item, self._redactor, _keeping(seal, unsealed))
                else:
                    data, found = scrub_json(item, self._redactor, seal)
                records.append(Record(item.topic, item.key, data))
                if self.sealer is not None and self.sealer.stats.truncated != cut_before:
                    cut_before = self.sealer.stats.truncated
                    self.stats.truncated[item.topic] = self.stats.truncated.get(item.topic, 0) + 1
            except Exception:
                log.exception("events: cannot serialise a %s event; dropped", item.type)
                self._drop(1, "unserialisable event")
                continue
            heard = Record(item.topic, item.key, unsealed[0]) if unsealed else records[-1]
            for listen in self.listeners:
                try:
                    listen(heard)
                except Exception:
                    log.exception("events: a listener failed on a %s event", item.type)
            for category, count in found.items():
                self.stats.findings[category] = self.stats.findings.get(category, 0) + count
        return records

    async def _sender(self) -> None:
        assert self._primary is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queue_ready.clear()
                await self._queue_ready.wait()
                continue
            await self._linger(self._queue, self._closing)
            ready = await self._keys_ready(self._queue, self.config.batch_max)
            ready = min(ready, len(self._queue))
            if not ready:
                continue  # moved to the spool while the keys were fetched
            batch: list[Event | PlainEvent | Record] = [self._queue.popleft() for _ in range(ready)]
            records = await self._prepare(batch, self._queue)
            self._inflight, self._inflight_spooled = records, False
            try:
                self.stats.sent += await self._deliver(records)
            except SinkError as exc:
                self.stats.failed += 1
                log.warning("events: primary sink failed (%s); spooling", str(exc))  # see replay
                if not self._inflight_spooled:
                    self._enter_spooling(failed=records)
            except Exception:
                self.stats.failed += 1
                log.exception("events: sender crashed on a batch; spooling it")
                if not self._inflight_spooled:
                    self._enter_spooling(failed=records)
            finally:
                self._inflight = None

    async def _spooler(self) -> None:
        while True:
            if not self._spool_buf:
                if self._spool_closing:
                    return
                self._spool_ready.clear()
                await self._spool_ready.wait()
                continue
            await self._linger(self._spool_buf, self._spool_closing)
            ready = await self._keys_ready(self._spool_buf, self.config.batch_max * 4)
            size = min(len(self._spool_buf), ready)
            if not size:
                continue
            # Busy from the moment the batch leaves the buffer: while it is being prepared
            # the buffer can look empty, and the replayer must not go back to direct mode
            # then (the batch would land in the spool with nothing left to replay it).
            self._spool_writing = True
            records: list[Record] = []
            try:
                batch = [self._spool_buf.popleft() for _ in range(size)]
                records = await self._prepare(batch, self._spool_buf)
                await self._spool.emit(records)
                self.stats.spooled += len(records)
            except SpoolFull as exc:
                refused = len(records) - exc.accepted
                self.stats.spooled += exc.accepted
                self.stats.refused += refused
                self._drop(refused, str(exc))
            except Exception:
                log.exception("events: spool write failed; %d events lost", len(records))
                self._drop(len(records), "spool write failed")
            finally:
                self._spool_writing = False
            self._replay_wake.set()

    async def _replayer(self) -> None:
        assert self._primary is not None
        kafka = self.config.kafka
        base = kafka.retry_backoff_s if kafka else 0.5
        ceiling = kafka.retry_backoff_max_s if kafka else 5.0
        backoff = base
        while not self._closing:
            if self._mode != "spooling":
                self._replay_wake.clear()
                await self._replay_wake.wait()
                continue
            lines, position = await self._spool.read(self.config.batch_max)
            if not lines:
                idle = not self._spool_buf and not self._spool_writing
                if idle and self._spool.spool.pending_bytes == 0:
                    # Checked and switched in one step of the loop: no write can slip between.
                    self._mode = "direct"
                    log.info("events: spool replayed; sending to Kafka directly again")
                    continue
                self._replay_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._replay_wake.wait(), 0.2)
                continue
            records = []
            for line in lines:
                try:
                    records.append(record_from_line(line))
                except ValueError:
                    self.stats.corrupt += 1
                    log.error("events: skipping an unreadable spool line (%d bytes)", len(line))
            try:
                delivered = await self._deliver(records)
            except Exception as exc:  # a sink's bug must not end the replay: retry later
                self.stats.failed += 1
                if not isinstance(exc, SinkError):
                    log.error("events: unexpected error replaying to Kafka: %r", exc)
                # The message, not the exception: its traceback would pin the client's sockets.
                why = str(exc)
                self._warn(
                    "replay", "events: replay to Kafka failed (%s); retry in %.1fs", why, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ceiling)
                continue
            await self._spool.commit(position)
            self.stats.replayed += delivered
            backoff = base

    async def _deliver(self, records: list[Record]) -> int:
        """Send a batch to the primary sink; returns how many it delivered.

        Records it can never take (RecordsRejected) go to the dead-letter spool, so one
        poison record never holds back the ones behind it. SinkError: retry the batch.
        """
        assert self._primary is not None
        try:
            delivery = await self._primary.emit(records)
        except RecordsRejected as exc:
            self._count_truncated(records, exc.delivery)
            await self._set_aside(exc.delivery.rejected)
            return len(records) - len(exc.delivery.rejected)
        self._count_truncated(records, delivery)
        return len(records)

    def _count_truncated(self, records: list[Record], delivery: Delivery | None) -> None:
        if delivery is None or not delivery.truncated:
            return
        for index in delivery.truncated:
            topic = records[index].topic
            self.stats.truncated[topic] = self.stats.truncated.get(topic, 0) + 1
        self._warn(
            "truncated",
            "events: %d sent with content cut to fit Kafka's record size limit",
            len(delivery.truncated),
        )

    async def _set_aside(self, rejected: tuple[Rejection, ...]) -> None:
        for rejection in rejected:
            key = (rejection.record.topic, rejection.reason)
            self.stats.dead_lettered[key] = self.stats.dead_lettered.get(key, 0) + 1
        first = rejected[0]
        self._warn(
            "dead_letter",
            "events: Kafka can never take %d events (%s: %s); set aside in the dead-letter spool",
            len(rejected),
            first.reason,
            first.detail,
        )
        if self._dead_letter is None:
            self._drop(len(rejected), "no dead-letter spool for events Kafka can never take")
            return
        try:
            await self._dead_letter.emit([rejection.record for rejection in rejected])
        except SpoolFull as exc:
            self._drop(len(rejected) - exc.accepted, f"dead-letter spool: {exc}")
        except Exception:
            log.exception("events: dead-letter spool write failed; %d events lost", len(rejected))
            self._drop(len(rejected), "dead-letter spool write failed")

    async def aclose(self) -> None:
        """Drain the queue to Kafka (within drain_timeout_s) or the spool, then close sinks."""
        if self._closed:
            return
        # The sender stops first: a batch it fails to send still has to reach the spooler.
        self._closing, self._closed = True, True
        self._queue_ready.set()
        self._replay_wake.set()
        tasks = {task.get_name(): task for task in self._tasks}
        warm = tasks.get("loopgate-events-warm")
        if warm is not None:
            await warm  # bounded by the child's start timeout; cancelling it would kill the child
        sender = tasks.get("loopgate-events-sender")
        if sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(sender), self.config.drain_timeout_s)
            except TimeoutError:
                log.warning("events: Kafka drain timed out; spooling the rest")
                self._enter_spooling()  # the batch in flight too, before the task lets go of it
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        if self._queue:
            self._enter_spooling()
        replayer = tasks.get("loopgate-events-replayer")
        if replayer is not None:
            replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replayer
        spooler = tasks.get("loopgate-events-spooler")
        if spooler is not None:
            self._spool_closing = True
            self._spool_ready.set()
            await spooler
        if self._primary is not None:
            await self._primary.aclose()
        if self._dead_letter is not None:
            await self._dead_letter.aclose()
        await self._spool.aclose()
        left = len(self._spool_buf)
        if left:
            self._drop(left, "left over at close")


@asynccontextmanager
async def open_pipeline(
    config: EventsConfig, instance: str, primary: EventSink | None = None
) -> AsyncIterator[EventPipeline]:
    """The pipeline for these settings, started; drained and closed on exit.

    `primary` overrides the Kafka sink built from `config.kafka` (tests pass a MemorySink);
    that sink runs its producer in a child process or on a thread (`kafka.producer`).
    """
    spool = await SpoolSink.open(
        config.spool.dir, instance, config.spool.segment_bytes, config.spool.max_bytes
    )
    if primary is None and config.kafka is not None:
        if config.kafka.producer == "process":
            primary = KafkaProcessSink(config.kafka)
        else:
            primary = KafkaSink(config.kafka)
    dead_letter = None
    if primary is not None:
        # Inside the folder this process holds, under its own lock and bound.
        dead_letter = await SpoolSink.open(
            spool.spool.directory,
            DEAD_LETTER,
            config.spool.segment_bytes,
            config.spool.dead_letter_max_bytes,
        )
    redactor = Redactor.from_config(config.redaction) if config.redaction.enabled else None
    shared = config.kafka is not None or primary is not None
    store = key_store(config.privacy, config.spool.dir, shared) if config.privacy.seal else None
    # Sealed content cannot be cut by the Kafka sink: cut it before sealing, to a size whose
    # base64 ciphertext (4/3) plus the metadata still fits the producer's record limit.
    limit = config.kafka.max_request_bytes if config.kafka else _DEFAULT_RECORD_BYTES
    max_plain = (limit - min(_METADATA_ROOM, limit // 4)) * 3 // 4
    sealer = (
        Sealer(store, config.privacy.retry_after_s, max_plain=max_plain)
        if store is not None
        else None
    )
    pipeline = EventPipeline(
        config, instance, spool, primary, redactor, dead_letter=dead_letter, sealer=sealer
    )
    pipeline.start()
    try:
        if store is not None and hasattr(store, "listen"):
            store.listen()  # forgets made on other replicas reach this one's key cache
        yield pipeline
    finally:
        await pipeline.aclose()
        if store is not None:
            await store.aclose()


def _keeping(
    seal: Callable[[dict[str, Any]], None], kept: list[bytes]
) -> Callable[[dict[str, Any]], None]:
    """`seal`, after keeping the event's JSON as it is before sealing in `kept`."""

    def keep_then_seal(data: dict[str, Any]) -> None:
        if sealable(data) is not None:  # others are heard as written: nothing to keep
            kept.append(orjson.dumps(data, option=orjson.OPT_UTC_Z))
        seal(data)

    return keep_then_seal
