"""KafkaProcessSink: the Kafka producer in a child process, off the serving process's GIL.

kafka-python is pure Python: building record batches, its network thread and each flush
hold the GIL the serving event loop needs. Here a child (`python -m
feedback.sinks.kafka_process`, one per gateway worker) runs KafkaSink's synchronous core,
and the parent only pickles each batch over a pipe (about 1 us a record).

Wire: frames of a 4-byte big-endian length and a body. The parent sends the config (JSON)
first; the child answers ("ready", pid). Then one batch at a time: a pickled list of
(topic, key, value) tuples, answered by ("ok", truncated indices, [(index, reason,
detail), ...]) or ("unavailable", message). Closing the child's stdin closes it.

Faults lose nothing: a child that dies, answers nonsense or does not answer in time (then
it is killed) fails the batch with SinkUnavailable, so the pipeline spools it and replays
it later; the next batch starts a fresh child. The child lives no longer than its parent:
it exits on EOF on stdin, and a thread watching its parent id exits it when orphaned even
if it is stuck in the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import site
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from feedback.config import KafkaConfig
from feedback.sinks.base import Delivery, Record, Rejection, SinkUnavailable

MODULE = "feedback.sinks.kafka_process"  # in the child's command line: tools find it by it

_HEADER = struct.Struct(">I")
# Starting the interpreter and importing kafka-python, on a starved machine.
_START_TIMEOUT_S = 30.0
_ORPHAN_POLL_S = 0.5

log = logging.getLogger(__name__)


def reply_bound(config: KafkaConfig) -> float:
    """How long one batch may take in the child before it is killed: connecting, then up to
    SIZE_TRIES sends each waiting send_timeout_s for acks, plus a margin."""
    from feedback.sinks.kafka import SIZE_TRIES

    return config.connect_timeout_s * 2 + config.send_timeout_s * SIZE_TRIES + 3.0


def close_bound(config: KafkaConfig) -> float:
    """How long a closing child may flush before it is killed."""
    return config.send_timeout_s + 3.0


# -- the wire format (pure) -------------------------------------------------------------------


def encode_batch(records: Sequence[Record]) -> bytes:
    """A batch as a request body."""
    return pickle.dumps([(r.topic, r.key, r.value) for r in records], protocol=5)


def decode_batch(body: bytes) -> list[Record]:
    """A request body as the batch."""
    return [Record(topic, key, value) for topic, key, value in pickle.loads(body)]


def encode_delivery(delivery: Delivery) -> bytes:
    """What the child did with a batch, as a reply body (records stay with the parent)."""
    rejected = [(r.index, r.reason, r.detail) for r in delivery.rejected]
    return pickle.dumps(("ok", list(delivery.truncated), rejected), protocol=5)


def encode_unavailable(message: str) -> bytes:
    """A failed batch, as a reply body."""
    return pickle.dumps(("unavailable", message), protocol=5)


def decode_reply(body: bytes, records: Sequence[Record]) -> Delivery:
    """The Delivery a reply describes, with the parent's own records; SinkUnavailable for a
    failed batch. ValueError when the reply is not one the child writes."""
    try:
        reply = pickle.loads(body)
    except Exception as exc:
        raise ValueError(f"unreadable reply: {exc!r}") from exc
    match reply:
        case ("unavailable", str(message)):
            raise SinkUnavailable(message)
        case ("ok", list(truncated), list(rejected)):
            return Delivery(
                tuple(_index(i, records) for i in truncated),
                tuple(_rejection(item, records) for item in rejected),
            )
    raise ValueError(f"unexpected reply: {reply!r:.200}")


def _index(index: object, records: Sequence[Record]) -> int:
    if not isinstance(index, int) or not 0 <= index < len(records):
        raise ValueError(f"no record {index!r:.50} in a batch of {len(records)}")
    return index


def _rejection(item: object, records: Sequence[Record]) -> Rejection:
    match item:
        case (index, str(reason), str(detail)):
            at = _index(index, records)
            return Rejection(at, records[at], reason, detail)
    raise ValueError(f"unexpected rejection: {item!r:.200}")


# -- the parent ---------------------------------------------------------------------------------


class KafkaProcessSink:
    """Sends batches to Kafka through a child process; starts it lazily and again after any
    fault (the failed batch is SinkUnavailable: spooled and retried, never lost)."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.starts = 0  # children started; more than one means it crashed or hung
        self._proc: asyncio.subprocess.Process | None = None
        self._killed: list[asyncio.subprocess.Process] = []  # to wait for in aclose
        # The pipeline's sender and replayer may overlap; one batch at a time on the pipe.
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def restarts(self) -> int:
        """Children started after the first (each after a crash, a hang or a bad reply)."""
        return max(self.starts - 1, 0)

    @property
    def pid(self) -> int | None:
        """The running child's process id, if one runs."""
        return self._proc.pid if self._proc is not None else None

    async def warm(self) -> None:
        """Start the child now, so that the first batch does not wait for it (~1 s). A failure
        is logged; the first batch tries again."""
        async with self._lock:
            if self._proc is not None or self._closed:
                return
            try:
                await self._start()
            except Exception as exc:  # never fails the pipeline's start or close
                log.warning("events: %s; the first batch tries again", exc)

    async def emit(self, records: Sequence[Record]) -> Delivery:
        """Send the batch and wait for every ack (KafkaSink.emit's contract).

        SinkUnavailable when Kafka or the child fails or is slow (retry the batch);
        RecordsRejected when every record was delivered except some that never can be.
        """
        from feedback.sinks.kafka import rejected_error

        if not records:
            return Delivery()
        if self._closed:
            raise SinkUnavailable("the Kafka producer process is closed")
        batch = list(records)
        async with self._lock:
            delivery = await self._exchange(batch)
        if delivery.rejected:
            raise rejected_error(delivery, len(batch))
        return delivery

    async def _exchange(self, records: list[Record]) -> Delivery:
        proc = self._proc or await self._start()
        bound = reply_bound(self.config)
        request = encode_batch(records)
        async with self._or_discard(proc, f"did not answer within {bound:.0f}s", "failed"):
            async with asyncio.timeout(bound):
                body = await _request(proc, request)
            return decode_reply(body, records)

    @contextlib.asynccontextmanager
    async def _or_discard(
        self, proc: asyncio.subprocess.Process, late: str, failed: str
    ) -> AsyncIterator[None]:
        """Any failure of an exchange with `proc` kills and reaps it and is SinkUnavailable;
        a SinkUnavailable from a healthy child (Kafka's answer) passes as it is."""
        try:
            yield
        except SinkUnavailable:
            raise
        except TimeoutError:
            await self._discard(proc)
            raise SinkUnavailable(f"the Kafka producer process {late}; killed it") from None
        except Exception as exc:
            # Died (EOF, a broken pipe; uvloop: RuntimeError on its closed pipe), or answered
            # what it never writes: whatever it was, a fresh child takes the next batch.
            await self._discard(proc)
            raise SinkUnavailable(f"the Kafka producer process {failed}: {exc!r}") from None
        except BaseException:
            # Cancelled mid-exchange: its reply would answer the next batch. Kill it now (no
            # await while cancelled); aclose waits for it.
            self._abandon(proc)
            raise

    async def _start(self) -> asyncio.subprocess.Process:
        self.starts += 1
        if self.starts > 1:
            log.warning("events: starting the Kafka producer process again (%d)", self.starts)
        try:
            proc = await asyncio.create_subprocess_exec(
                *child_command(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=child_environment(),
            )
        except OSError as exc:  # no interpreter, no file descriptors or memory left
            raise SinkUnavailable(f"cannot start the Kafka producer process: {exc!r}") from None
        self._proc = proc
        late = f"did not start within {_START_TIMEOUT_S:.0f}s"
        async with self._or_discard(proc, late, "did not start"):
            async with asyncio.timeout(_START_TIMEOUT_S):
                body = await _request(proc, self._setup())
            _check_greeting(body, proc.pid)
        log.debug("events: Kafka producer process %d started", proc.pid)
        return proc

    def _setup(self) -> bytes:
        setup = {
            "config": self.config.model_dump(mode="json"),
            "parent": os.getpid(),
            "level": log.getEffectiveLevel(),
            "kafka_level": logging.getLogger("kafka").getEffectiveLevel(),
        }
        return json.dumps(setup).encode()

    def _abandon(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the child now; aclose waits for it."""
        if self._proc is proc:
            self._proc = None
        _kill(proc)
        self._killed.append(proc)

    async def _discard(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the child and wait for it: no zombie, no second answer."""
        self._abandon(proc)
        await proc.wait()  # if cancelled meanwhile, aclose still waits for it
        self._killed.remove(proc)

    async def aclose(self) -> None:
        """Close the child's stdin so it flushes and exits (bounded), then kill what is left."""
        self._closed = True
        for killed in self._killed:
            await killed.wait()
        self._killed.clear()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # EOF: the child closes its producer and exits
        try:
            async with asyncio.timeout(close_bound(self.config)):
                await proc.wait()
        except TimeoutError:
            log.warning("events: the Kafka producer process did not exit in time; killed it")
        _kill(proc)
        await proc.wait()


async def _request(proc: asyncio.subprocess.Process, body: bytes) -> bytes:
    """Write one frame to the child and read its answer. EOFError when the child is gone."""
    writer, reader = proc.stdin, proc.stdout
    assert writer is not None
    assert reader is not None
    if writer.is_closing():
        raise EOFError("the Kafka producer process closed its input")
    writer.write(_HEADER.pack(len(body)) + body)  # one write: the child wakes once
    await writer.drain()
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise EOFError("the Kafka producer process closed its output") from exc


def _check_greeting(body: bytes, pid: int) -> None:
    try:
        greeting = pickle.loads(body)
    except Exception as exc:
        raise ValueError(f"unreadable greeting: {exc!r}") from exc
    if greeting != ("ready", pid):
        raise ValueError(f"unexpected greeting: {greeting!r:.100}")


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # by its pid, which is ours until we wait for it


def child_command() -> list[str]:
    """The child's command line: this interpreter, safe path (-P: not the cwd's packages)."""
    return [sys.executable, "-P", "-m", MODULE]


def child_environment() -> dict[str, str]:
    """The parent's environment, with the folder this package came from first on the path,
    so the child runs the same code as the parent."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    installed = {str(Path(p).resolve()) for p in site.getsitepackages()}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


# -- the child ----------------------------------------------------------------------------------


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # EOF: the parent closed us, or is gone
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


def _write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _watch_parent(parent: int, grace: float) -> None:
    """Exit once orphaned: EOF normally ends us first, unless the client is stuck."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_ORPHAN_POLL_S)
        time.sleep(grace)
        os._exit(3)

    threading.Thread(target=watch, name="loopgate-parent-watch", daemon=True).start()


def _serve(sink: Any, requests: IO[bytes], replies: IO[bytes]) -> None:
    while (body := _read_frame(requests)) is not None:
        try:
            reply = encode_delivery(sink.send_batch(decode_batch(body)))
        except SinkUnavailable as exc:
            reply = encode_unavailable(str(exc))
        _write_frame(replies, reply)


def main() -> None:
    """The child: read the setup, then send batches until stdin ends."""
    # Frames go to a copy of stdout; anything else printed goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    # Ctrl-C reaches the whole process group: the parent decides when we stop (EOF).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    first = _read_frame(requests)
    if first is None:
        return
    setup = json.loads(first)
    logging.basicConfig(
        level=setup["level"],
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s [kafka-producer %(process)d] %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(setup["kafka_level"])
    if os.getppid() != setup["parent"]:
        return  # the parent died before we started
    config = KafkaConfig.model_validate(setup["config"])
    _watch_parent(setup["parent"], close_bound(config))

    from feedback.sinks.kafka import KafkaSink

    sink = KafkaSink(config)  # imports the client: before "ready", not in the first batch
    _write_frame(replies, pickle.dumps(("ready", os.getpid()), protocol=5))
    try:
        _serve(sink, requests, replies)
    except BrokenPipeError:
        pass  # the parent is gone: close and go
    finally:
        sink.close_producer()


if __name__ == "__main__":
    main()
