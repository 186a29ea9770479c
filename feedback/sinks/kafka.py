"""KafkaSink: kafka-python producer (acks=all, idempotent, compressed) run off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from feedback.config import KafkaConfig
from feedback.schema import TOPICS
from feedback.sinks.base import Record, SinkUnavailable

log = logging.getLogger(__name__)


def load_kafka_client() -> None:
    """Import kafka-python now, in this thread, without its import-time DeprecationWarning.

    kafka-python 3 reads its protocol schemas with importlib.resources.read_text, deprecated
    on Python 3.11; the warning is the library's, not ours, and would fail warning-strict runs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in ("kafka", "kafka.admin", "kafka.errors", "kafka.producer", "kafka.consumer"):
            importlib.import_module(module)


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
        # One thread: producer calls stay ordered and never block the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopgate-kafka")
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
                bootstrap_timeout_ms=connect_ms,
                reconnect_backoff_max_ms=1000,
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
                topics = [
                    NewTopic(name, self.config.partitions, self.config.replication_factor)
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

    def _send(self, records: Sequence[Record]) -> None:
        from kafka.errors import KafkaError

        try:
            if self._producer is None:
                self._producer = self._connect()
            if not self._topics_ready:
                # Only once the producer got through: kafka-python's admin client leaks its
                # IO thread when it cannot bootstrap, so it is never tried against a dead broker.
                self._ensure_topics()
            producer = self._producer
            futures = [
                producer.send(record.topic, key=record.key.encode(), value=record.value)
                for record in records
            ]
            producer.flush(timeout=self.config.send_timeout_s)
            for future in futures:
                if future.failed():
                    raise SinkUnavailable(f"Kafka did not take a record: {future.exception}")
        except SinkUnavailable:
            self._discard()
            raise
        except KafkaError as exc:
            self._discard()
            raise SinkUnavailable(f"Kafka send failed: {exc}") from exc
        except Exception as exc:
            # The client library's own bugs must not kill the worker: treat as unavailable.
            log.exception("unexpected error from the Kafka client")
            self._discard()
            raise SinkUnavailable(f"Kafka client error: {exc!r}") from exc

    async def emit(self, records: Sequence[Record]) -> None:
        """Send the batch and wait for every ack; SinkUnavailable when Kafka fails or is slow."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._send, list(records))

    def _close(self) -> None:

        producer, self._producer = self._producer, None
        if producer is not None:
            _close_producer(producer, self.config.send_timeout_s + 1)

    async def aclose(self) -> None:
        """Flush and close the producer (bounded by the send timeout)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
