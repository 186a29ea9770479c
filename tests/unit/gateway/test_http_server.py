"""The corked uvicorn protocol: one write per loop iteration, nothing held back longer."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
import uvloop

from gateway.http_server import (
    CorkedHttpToolsProtocol,
    CorkedTransport,
    GuardedHttpToolsProtocol,
    choose_protocol,
    compatible,
)

Scope = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


class RecordingTransport:
    """Stands in for a socket transport: records what reaches it, in calls."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def _run(main: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(main())


def test_writes_of_one_iteration_leave_as_one() -> None:
    async def main() -> None:
        raw = RecordingTransport()
        corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        corked.write(b"")
        corked.writelines([b"he", b"llo"])
        assert raw.writes == []  # held until the iteration ends
        assert corked.get_write_buffer_size() == 24
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nhello"]
        corked.write(b"next")
        await asyncio.sleep(0)
        assert raw.writes[1:] == [b"next"]  # a later iteration is a later write
        assert corked.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated

    _run(main)


def test_a_started_stream_writes_straight_through_until_its_answer_completes() -> None:
    class Cycle:
        response_started = False
        response_complete = False

    class Protocol:
        cycle: Cycle | None = None

    async def main() -> None:
        raw, protocol = RecordingTransport(), Protocol()
        corked = CorkedTransport(raw, asyncio.get_running_loop(), protocol)  # type: ignore[arg-type]
        corked.write(b"idle")  # no answer in progress: held
        await asyncio.sleep(0)
        protocol.cycle = cycle = Cycle()
        cycle.response_started = True
        corked.write(b"head")
        corked.write(b"chunk 1")
        assert raw.writes == [b"idle"]  # the head and first chunk of one iteration: held
        await asyncio.sleep(0)
        assert raw.writes == [b"idle", b"headchunk 1"]
        corked.write(b"chunk 2")  # the answer has started and is not complete: straight out
        assert raw.writes[-1] == b"chunk 2"
        cycle.response_complete = True
        corked.write(b"0\r\n\r\n")
        corked.uncork()  # the protocol's on_response_complete
        assert raw.writes[-1] == b"0\r\n\r\n"
        corked.write(b"next head")
        corked.write(b"next body")
        assert raw.writes[-1] == b"0\r\n\r\n"  # held again
        await asyncio.sleep(0)
        assert raw.writes[-1] == b"next headnext body"
        raw.closing = True
        corked.write(b"too late")  # a closed transport: nothing written (and no error)
        await asyncio.sleep(0)
        assert raw.writes[-1] == b"next headnext body"

    _run(main)


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        raw = RecordingTransport()
        corked = CorkedTransport(raw, loop)  # type: ignore[arg-type]
        corked.write(b"last words")
        corked.close()
        assert raw.writes == [b"last words"]
        assert raw.closing
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
        assert raw.writes == [b"last words"]

        raw = RecordingTransport()
        corked = CorkedTransport(raw, loop)  # type: ignore[arg-type]
        corked.write(b"never sent")
        corked.abort()
        await asyncio.sleep(0)
        assert raw.writes == []
        assert raw.aborted

    _run(main)


def test_bytes_for_a_peer_that_left_are_dropped() -> None:
    async def main() -> None:
        raw = RecordingTransport()
        corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        corked.write(b"too late")
        raw.closing = True  # the connection was lost before the iteration ended
        await asyncio.sleep(0)
        assert raw.writes == []

    _run(main)


@asynccontextmanager
async def _serving(app: App) -> AsyncIterator[int]:
    """uvicorn with the corked protocol on a free loopback port, in this loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app, http=CorkedHttpToolsProtocol, loop="none", lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


def test_answers_arrive_whole_on_a_kept_alive_connection() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        body = scope["path"].encode() * 1000
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        async with _serving(app) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for path in ("/a", "/bb"):
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head, body = await _read_answer(reader)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert body == path.encode() * 1000
            writer.close()
            await writer.wait_closed()

    _run(main)


def test_streamed_chunks_leave_as_they_are_sent() -> None:
    second = asyncio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await second.wait()  # the client must have the first chunk before this one exists
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        async with _serving(app) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"transfer-encoding: chunked" in head.lower()
            first = await asyncio.wait_for(reader.readuntil(b"data: one\n\n\r\n"), 5)
            assert first.endswith(b"data: one\n\n\r\n")
            second.set()
            rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
            assert b"data: two\n\n" in rest
            writer.close()
            await writer.wait_closed()

    _run(main)


def test_an_answer_before_connection_close_is_not_lost() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        async with _serving(app) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # Connection: close makes uvicorn close right after the body, in the same iteration.
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)  # to EOF
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert data.endswith(b"\r\n\r\nok")
            writer.close()
            await writer.wait_closed()

    _run(main)


def test_the_guarded_protocol_is_chosen_for_the_tested_uvicorn() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    assert compatible(HttpToolsProtocol, RequestResponseCycle)
    assert CorkedHttpToolsProtocol is GuardedHttpToolsProtocol


def test_a_changed_private_uvicorn_class_falls_back_to_uvicorns_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    class RenamedCycle:
        """A later uvicorn's request cycle, say, whose body flag has another name."""

        def __init__(self) -> None:
            self.body_pending = True
            self.disconnected = False

    class NoHeaderHook(HttpToolsProtocol):
        on_headers_complete = None  # type: ignore[assignment]

    with caplog.at_level(logging.WARNING, logger="gateway.http_server"):
        assert choose_protocol(HttpToolsProtocol, RenamedCycle) is HttpToolsProtocol
        assert choose_protocol(NoHeaderHook, RequestResponseCycle) is NoHeaderHook
    assert "plain protocol" in caplog.text
