"""KafkaSink: kafka-python producer (acks=all, idempotent, compressed) run off the event loop.

`send_batch` and `close_producer` are the synchronous core: `emit` runs them on one thread
of this process; feedback.sinks.kafka_process runs them in a child process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from feedback.config import KafkaConfig
from feedback.schema import TOPICS
from feedback.sinks.base import Delivery, Record, RecordsRejected, Rejection, SinkUnavailable
from feedback.sinks.faults import (
    INVALID_TOPIC,
    REJECTED,
    TOO_LARGE,
    TRANSIENT,
    UNKNOWN,
    UNSERIALISABLE,
    classify,
    valid_topic,
)
from feedback.sinks.headers import TRUNCATED_HEADER, Headers, record_headers
from feedback.sinks.partition import make_partitioner
from feedback.truncation import fit

log = logging.getLogger(__name__)

# A record the broker finds too large is cut to half, then a quarter, ... of what it sent.
SIZE_TRIES = 6


def _size(record: Record) -> bytes:
    return str(len(record.value)).encode()


def _without_truncated(headers: Headers) -> Headers:
    return [(name, value) for name, value in headers if name != TRUNCATED_HEADER]


@dataclass(frozen=True, slots=True)
class _Pending:
    """A record on its way: key, value as it will be sent, headers, the most its value may be."""

    key: bytes
    value: bytes
    headers: Headers
    budget: int

    def halved(self) -> _Pending:
        """The same record, to be cut to half of what was just sent."""
        return _Pending(self.key, self.value, self.headers, len(self.value) // 2)


def _without_client_metrics(producer_class: Any) -> dict[str, Any]:
    """kafka-python's own metrics off, where it can: nothing reads them (the gateway counts
    events itself), and its sender updated several sensors per record and per request."""
    return {"metrics_enabled": False} if "metrics_enabled" in producer_class.DEFAULT_CONFIG else {}


def load_kafka_client() -> None:
    """Import kafka-python now, in this thread, without its import-time DeprecationWarning.

    kafka-python 3 reads its protocol schemas with importlib.resources.read_text, deprecated
    on Python 3.11; the warning is the library's, not ours, and would fail warning-strict runs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in ("kafka", "kafka.admin", "kafka.errors", "kafka.producer", "kafka.consumer"):
            importlib.import_module(module)


def rejected_error(delivery: Delivery, total: int) -> RecordsRejected:
    """The error `emit` raises when every record but `delivery.rejected` went through."""
    reasons = sorted({r.reason for r in delivery.rejected})
    return RecordsRejected(
        f"Kafka can never take {len(delivery.rejected)} of {total} records ({', '.join(reasons)})",
        delivery,
    )


def _close_producer(producer: Any, timeout: float) -> None:
    """Close a producer for good, even when its pending batches will not flush."""
    from kafka.errors import KafkaError

    # Pending batches expire after the delivery timeout, so a second try normally succeeds.
    for _ in range(3):
        try:
            producer.close(timeout=timeout)
            return
        except KafkaError as exc:
            log.warning("closing the Kafka producer: %s", str(exc))
    # Last resort: a producer left open would try (and fail) to flush again when collected.
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
    producer._closed = True


class KafkaSink:
    """Sends batches to Kafka; connects lazily and reconnects after any failure."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        # One thread: producer calls stay ordered and never block the event loop. Made on the
        # first emit: a child process calling send_batch itself never starts it.
        self._executor: ThreadPoolExecutor | None = None
        self._producer: Any = None
        self._topics_ready = not config.create_topics
        load_kafka_client()  # here, not in the worker thread: warning filters are process-wide

    def _timeouts_ms(self) -> tuple[int, int]:
        send_ms = int(self.config.send_timeout_s * 1000)
        request_ms = int(min(self.config.connect_timeout_s, self.config.send_timeout_s / 2) * 1000)
        return send_ms, max(request_ms, 100)

    def _probe(self) -> None:
        # A plain TCP connect first: kafka-python 3.0 leaks the socket of every refused
        # connection (kafka/net/inet.py), so a dead broker is never handed to it.
        timeout = self.config.connect_timeout_s
        for server in self.config.bootstrap_servers:
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or server, int(port)), timeout):
                    return
            except (OSError, ValueError):
                continue
        raise SinkUnavailable(
            f"no Kafka bootstrap server accepts connections: {self.config.bootstrap_servers}"
        )

    def _connect(self) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self._probe()

        send_ms, request_ms = self._timeouts_ms()
        connect_ms = int(self.config.connect_timeout_s * 1000)
        try:
            producer = KafkaProducer(
                bootstrap_servers=self.config.bootstrap_servers,
                client_id=self.config.client_id,
                acks="all",
                enable_idempotence=True,
                compression_type=None
                if self.config.compression == "none"
                else self.config.compression,
                linger_ms=self.config.linger_ms,
                request_timeout_ms=request_ms,
                delivery_timeout_ms=max(send_ms, request_ms + self.config.linger_ms),
                max_block_ms=connect_ms,
                max_request_size=self.config.max_request_bytes,
                bootstrap_timeout_ms=connect_ms,
                reconnect_backoff_max_ms=1000,
                # Kafka's default partitions (murmur2 of the key), hashed in C when it can.
                partitioner=make_partitioner(),
                **_without_client_metrics(KafkaProducer),
            )
        except KafkaError as exc:
            raise SinkUnavailable(
                f"cannot connect to Kafka {self.config.bootstrap_servers}: {exc}"
            ) from exc
        return producer

    def _ensure_topics(self) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        connect_ms = int(self.config.connect_timeout_s * 1000)
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.config.bootstrap_servers,
                client_id=f"{self.config.client_id}-admin",
                request_timeout_ms=max(connect_ms, 1000),
                bootstrap_timeout_ms=connect_ms,
            )
        except KafkaError as exc:
            raise SinkUnavailable(f"cannot reach Kafka to create topics: {exc}") from exc
        try:
            missing = set(TOPICS) - set(admin.list_topics())
            if missing:
                # The topic's limit is the producer's, so whatever the producer sends fits.
                limits = {"max.message.bytes": str(self.config.max_request_bytes)}
                topics = [
                    NewTopic(
                        name,
                        self.config.partitions,
                        self.config.replication_factor,
                        topic_configs=limits,
                    )
                    for name in sorted(missing)
                ]
                with contextlib.suppress(TopicAlreadyExistsError):  # another replica won
                    admin.create_topics(topics)
                log.info("created Kafka topics %s", ", ".join(sorted(missing)))
        except KafkaError as exc:
            raise SinkUnavailable(f"cannot create Kafka topics: {exc}") from exc
        finally:
            admin.close()
        self._topics_ready = True

    def _discard(self) -> None:
        # After a failure the producer may hold stale batches; start clean next time.
        producer, self._producer = self._producer, None
        # A broker that came back empty needs its topics again: check on reconnect.
        self._topics_ready = not self.config.create_topics
        if producer is None:
            return

        send_ms, _ = self._timeouts_ms()
        _close_producer(producer, send_ms / 1000 + 1)

    def _value_budget(self, key: bytes, headers: Headers) -> int:
        """The largest value that fits max_request_bytes with this key and these headers."""
        from kafka.record.default_records import DefaultRecordBatchBuilder

        overhead: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, b"", headers)
        # Room for the truncation header, and for the value's length varint as it grows.
        return self.config.max_request_bytes - overhead - len(TRUNCATED_HEADER) - 32

    def send_batch(self, records: Sequence[Record]) -> Delivery:
        """Send the batch and wait for every ack, in this thread (one thread at a time).

        SinkUnavailable when Kafka fails or is slow; rejected records are in the Delivery.
        """
        try:
            if self._producer is None:
                self._producer = self._connect()
            if not self._topics_ready:
                # Only once the producer got through: kafka-python's admin client leaks its
                # IO thread when it cannot bootstrap, so it is never tried against a dead broker.
                self._ensure_topics()
            return self._send_records(records)
        except SinkUnavailable:
            self._discard()
            raise
        except Exception as exc:
            # The client library's own bugs must not kill the worker: treat as unavailable.
            log.exception("unexpected error from the Kafka client")
            self._discard()
            raise SinkUnavailable(f"Kafka client error: {exc!r}") from exc

    def _send_records(self, records: Sequence[Record]) -> Delivery:
        """Send each record; cut or set aside the ones that can never go as they are.

        Raises SinkUnavailable for anything transient (the whole batch is retried).
        """
        rejected: dict[int, Rejection] = {}
        truncated: set[int] = set()
        todo: dict[int, _Pending] = {}
        for index, record in enumerate(records):
            if not valid_topic(record.topic):
                rejected[index] = Rejection(index, record, INVALID_TOPIC, "illegal topic name")
                continue
            try:
                key = record.key.encode()
            except UnicodeError as exc:
                rejected[index] = Rejection(index, record, UNSERIALISABLE, str(exc))
                continue
            headers = record_headers(record.value)
            # The exact size only near the limit: a rough upper bound clears nearly every record.
            rough = len(record.value) + len(key) + sum(len(n) + len(v) + 10 for n, v in headers)
            budget = len(record.value)
            if rough + 128 > self.config.max_request_bytes:
                budget = self._value_budget(key, headers)
            todo[index] = _Pending(key, record.value, headers, budget)
        for _ in range(SIZE_TRIES):
            if not todo:
                break
            todo = self._send_round(records, todo, rejected, truncated)
        for index in todo:  # still too large after every cut
            rejected[index] = Rejection(index, records[index], TOO_LARGE, "does not fit")
        return Delivery(tuple(sorted(truncated)), tuple(rejected[i] for i in sorted(rejected)))

    def _send_round(
        self,
        records: Sequence[Record],
        todo: dict[int, _Pending],
        rejected: dict[int, Rejection],
        truncated: set[int],
    ) -> dict[int, _Pending]:
        """One send of `todo`; returns the records to send again, to be cut smaller."""
        producer = self._producer
        sent: dict[int, tuple[Any, _Pending]] = {}
        again: dict[int, _Pending] = {}
        for index, pending in todo.items():
            record = records[index]
            if len(pending.value) > pending.budget:
                cut = fit(record.value, pending.budget)
                if cut is None:
                    size = len(record.value)
                    why = f"{size} bytes cannot be cut to {pending.budget}"
                    rejected[index] = Rejection(index, record, TOO_LARGE, why)
                    continue
                headers = [*_without_truncated(pending.headers), (TRUNCATED_HEADER, _size(record))]
                pending = _Pending(pending.key, cut, headers, pending.budget)
                truncated.add(index)
            try:
                future = producer.send(
                    record.topic, key=pending.key, value=pending.value, headers=pending.headers
                )
            except Exception as exc:
                verdict = classify(exc)
                if verdict == TRANSIENT:
                    raise SinkUnavailable(f"Kafka send failed: {exc}") from exc
                if verdict == TOO_LARGE:
                    again[index] = pending.halved()
                else:
                    reason = REJECTED if verdict == UNKNOWN else verdict
                    rejected[index] = Rejection(index, record, reason, str(exc))
                continue
            sent[index] = (future, pending)
        try:
            producer.flush(timeout=self.config.send_timeout_s)
        except Exception as exc:
            raise SinkUnavailable(f"Kafka did not acknowledge in time: {exc}") from exc
        acked = 0
        unknown: dict[int, BaseException] = {}
        for index, (future, pending) in sent.items():
            if not future.is_done:
                raise SinkUnavailable("Kafka did not acknowledge in time")
            if not future.failed():
                acked += 1
                continue
            error: BaseException = future.exception
            verdict = classify(error)
            if verdict == TRANSIENT:
                raise SinkUnavailable(f"Kafka did not take a record: {error}")
            if verdict == TOO_LARGE:
                again[index] = pending.halved()  # the broker's limit is below ours
            elif verdict == UNKNOWN:
                unknown[index] = error
            else:
                rejected[index] = Rejection(index, records[index], verdict, str(error))
        if unknown and not acked:
            # Nothing got through, and the error says nothing about the records: the cluster.
            raise SinkUnavailable(f"Kafka did not take a record: {next(iter(unknown.values()))}")
        for index, error in unknown.items():
            rejected[index] = Rejection(index, records[index], REJECTED, str(error))
        if acked < len(sent):
            # A producer that saw a record fail may hold reset sequence state: start clean.
            self._reset_producer()
        return again

    def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            send_ms, _ = self._timeouts_ms()
            _close_producer(producer, send_ms / 1000 + 1)
        self._producer = self._connect()

    async def emit(self, records: Sequence[Record]) -> Delivery:
        """Send the batch and wait for every ack.

        SinkUnavailable when Kafka fails or is slow (retry the batch); RecordsRejected when
        every record was delivered except some that never can be (set those aside).
        """
        if not records:
            return Delivery()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopgate-kafka")
        loop = asyncio.get_running_loop()
        delivery = await loop.run_in_executor(self._executor, self.send_batch, list(records))
        if delivery.rejected:
            raise rejected_error(delivery, len(records))
        return delivery

    def close_producer(self) -> None:
        """Flush and close the producer, in this thread (bounded by the send timeout)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            _close_producer(producer, self.config.send_timeout_s + 1)

    async def aclose(self) -> None:
        """Flush and close the producer (bounded by the send timeout)."""
        if self._executor is None:
            self.close_producer()  # never sent: nothing to flush, nothing blocks
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.close_producer)
        self._executor.shutdown(wait=True)
