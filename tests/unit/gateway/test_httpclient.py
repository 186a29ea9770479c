"""The upstream HTTP/1.1 client against real servers on loopback.

Raw asyncio servers write exact bytes (framing, faults, stalls); aiohttp serves where an
ordinary HTTP server is enough (TLS, a real chunked stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.httpclient import (
    ConnectError,
    ConnectTimeout,
    HttpClient,
    Origin,
    ProtocolError,
    ReadTimeout,
    Response,
    Timeouts,
)

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.aclose()


# -- servers ------------------------------------------------------------------------------------


class Peer:
    """One accepted connection, seen from the server's side."""

    def __init__(
        self,
        server: RawServer,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.number = number  # 1 for the first connection the server accepted
        self.reader = reader
        self.writer = writer

    async def request(self) -> bytes:
        """The next request head (its Content-Length body recorded too); b"" at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.server.heads.append(head)
        self.server.bodies.append(await self.reader.readexactly(length))
        return head

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_eof(self) -> None:
        """Read until the client goes away."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def drop(self) -> None:
        """Close the connection from the server's side."""
        self.writer.close()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A loopback server whose handler writes exact bytes; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []

    @property
    def origin(self) -> Origin:
        return Origin.parse(f"http://127.0.0.1:{self.port}")

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the transports run their close callbacks
        if kind is None and self._errors:
            raise self._errors[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handler(Peer(self, self.connections, reader, writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a broken script: fail the test that ran it
            self._errors.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)


def answer(body: bytes = b"", *headers: str, status: int = 200) -> bytes:
    """A whole response with Content-Length framing."""
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", *headers]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def keep_answering(response: bytes) -> Handler:
    """Answer every request on a connection with the same bytes."""

    async def handler(peer: Peer) -> None:
        while await peer.request():
            await peer.send(response)

    return handler


def cut_short(body: bytes, promised: int) -> Handler:
    """Promise `promised` bytes, send `body`, then close."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {promised}\r\n\r\n".encode()
        await peer.send(head + body)
        await asyncio.sleep(0.05)
        peer.drop()

    return handler


def answer_then_hang_up(answered: int) -> Handler:
    """Answer the first `answered` requests on the first connection; then read and hang up."""

    async def handler(peer: Peer) -> None:
        for _ in range(answered if peer.number == 1 else 0):
            await peer.request()
            await peer.send(answer(b"ok"))
        await peer.request()
        peer.drop()

    return handler


def asked_then_gone(asked: asyncio.Event, gone: asyncio.Event, head: bytes = b"") -> Handler:
    """Read a request, send `head` (if any), then wait for the client to hang up."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        if head:
            await peer.send(head)
        asked.set()
        await peer.until_eof()
        gone.set()

    return handler


@contextlib.asynccontextmanager
async def web_server(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve an aiohttp app on a free loopback port; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def fetch(client: HttpClient, origin: Origin, path: str = "/v1/x") -> bytes:
    """GET, read the whole body, release the connection."""
    response = await client.request("GET", origin, path)
    try:
        return await response.read()
    finally:
        response.release()


async def pieces_of(response: Response) -> list[bytes]:
    """Everything `iter_any()` yields, piece by piece."""
    return [piece async for piece in response.iter_any()]


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling client state nothing signals
            await asyncio.sleep(0.01)


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound on loopback with nothing listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, so connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(2)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


# -- bodies -------------------------------------------------------------------------------------


async def test_content_length_body_is_read_whole(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"hello world"))) as server:
        response = await client.request("GET", server.origin, "/v1/x")
        assert response.status == 200
        assert (b"Content-Length", b"11") in response.headers
        assert await response.read() == b"hello world"
        response.release()


async def test_chunked_body_is_read_whole(client: HttpClient) -> None:
    body = CHUNKED_HEAD + chunk(b"hello") + chunk(b" ") + chunk(b"world") + LAST_CHUNK
    async with RawServer(keep_answering(body)) as server:
        assert await fetch(client, server.origin) == b"hello world"


async def test_body_ended_by_closing_the_connection_is_read_whole(client: HttpClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nhello ")
        await peer.send(b"world")
        peer.drop()

    async with RawServer(handler) as server:
        assert await fetch(client, server.origin) == b"hello world"
        assert client.pool_for(server.origin).idle == []


# -- keep-alive ---------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        for _ in range(3):
            assert await fetch(client, server.origin) == b"ok"
        assert server.connections == 1
        assert len(server.heads) == 3
        assert client.pool_for(server.origin).opened == 1


async def test_connection_close_answer_is_not_reused(client: HttpClient) -> None:
    closing = answer(b"bye", "Connection: close")

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(closing)
        await peer.until_eof()  # the client, not the server, must drop it

    async with RawServer(handler) as server:
        assert await fetch(client, server.origin) == b"bye"
        assert await fetch(client, server.origin) == b"bye"
        assert server.connections == 2
        assert client.pool_for(server.origin).opened == 2


async def test_idle_connection_closed_by_server_is_not_used(client: HttpClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"ok"))
        if peer.number == 1:
            await asyncio.sleep(0.05)  # after the client put it back in the pool
            peer.drop()
        else:
            await peer.until_eof()

    async with RawServer(handler) as server:
        pool = client.pool_for(server.origin)
        assert await fetch(client, server.origin) == b"ok"
        await eventually(lambda: not pool.idle)  # the client noticed the close
        assert await fetch(client, server.origin) == b"ok"
        assert server.connections == 2
        assert len(server.heads) == 2


async def test_kept_alive_connection_closed_as_it_is_reused_is_retried(client: HttpClient) -> None:
    async def handler(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(answer(b"first"))
            await peer.request()
            peer.drop()  # read the second request, never answer it
        else:
            await keep_answering(answer(b"second"))(peer)

    async with RawServer(handler) as server:
        assert await fetch(client, server.origin) == b"first"
        assert await fetch(client, server.origin) == b"second"
        assert server.connections == 2
        assert len(server.heads) == 3
        assert client.pool_for(server.origin).opened == 2


async def test_concurrent_requests_each_get_their_own_connection(client: HttpClient) -> None:
    both_asked = asyncio.Barrier(3)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await both_asked.wait()  # answer only once both requests are in
        await peer.send(answer(f"conn {peer.number}".encode()))
        await peer.until_eof()

    async with RawServer(handler) as server:
        tasks = [asyncio.create_task(fetch(client, server.origin)) for _ in range(2)]
        async with asyncio.timeout(5):
            await both_asked.wait()
            bodies = await asyncio.gather(*tasks)
        assert sorted(bodies) == [b"conn 1", b"conn 2"]
        assert len(client.pool_for(server.origin).idle) == 2


async def test_connection_idle_past_keepalive_is_closed_not_reused() -> None:
    asked, gone = asyncio.Event(), asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.number == 1:
            await asked_then_gone(asked, gone, head=answer(b"ok"))(peer)
        else:
            await keep_answering(answer(b"ok"))(peer)

    async with RawServer(handler) as server:
        client = HttpClient(keepalive_s=0.1)
        try:
            assert await fetch(client, server.origin) == b"ok"
            await asyncio.sleep(0.2)
            assert await fetch(client, server.origin) == b"ok"
            await asyncio.wait_for(gone.wait(), 2)
            assert server.connections == 2
        finally:
            await client.aclose()


async def test_idle_connections_beyond_the_limit_are_closed() -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        client = HttpClient(max_idle_per_origin=1)
        try:
            await asyncio.gather(*(fetch(client, server.origin) for _ in range(3)))
            assert client.pool_for(server.origin).opened == 3
            assert len(client.pool_for(server.origin).idle) == 1
        finally:
            await client.aclose()


# -- streaming ----------------------------------------------------------------------------------


async def test_stream_yields_pieces_as_they_are_sent(client: HttpClient) -> None:
    go_on = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        await go_on.wait()
        await peer.send(chunk(b"data: two\n\n") + LAST_CHUNK)
        await peer.until_eof()

    async with RawServer(handler) as server:
        response = await client.request("GET", server.origin, "/v1/x", stream=True)
        pieces = response.iter_any()
        async with asyncio.timeout(5):
            first = await anext(pieces)
        assert first == b"data: one\n\n"
        go_on.set()
        rest = await pieces_of(response)
        assert first + b"".join(rest) == b"data: one\n\ndata: two\n\n"
        response.release()
        assert client.pool_for(server.origin).idle  # a finished stream keeps its connection


async def test_stream_from_an_aiohttp_server_arrives_intact(client: HttpClient) -> None:
    sent = [f"data: {i}\n\n".encode() for i in range(20)]

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in sent:
            await response.write(event)
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/events", events)
    async with web_server(app) as port:
        origin = Origin.parse(f"http://127.0.0.1:{port}")
        response = await client.request("GET", origin, "/v1/events", stream=True)
        assert response.status == 200
        assert b"".join(await pieces_of(response)) == b"".join(sent)
        response.release()


@st.composite
def fragmented_answers(draw: st.DrawFn) -> tuple[int, bytes, list[bytes]]:
    """(status, body, the response's bytes cut into pieces at arbitrary places)."""
    status = draw(st.sampled_from([200, 201, 400, 404, 500, 503]))
    body = draw(st.binary(max_size=3000))
    reason = http.HTTPStatus(status).phrase
    if draw(st.booleans()):
        raw = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        head = f"HTTP/1.1 {status} {reason}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        raw = head + b"".join(chunk(p) for p in pieces if p) + LAST_CHUNK
    splits = sorted(set(draw(st.lists(st.integers(1, len(raw) - 1), max_size=12))))
    fragments = [raw[a:b] for a, b in zip([0, *splits], [*splits, len(raw)], strict=True)]
    return status, body, fragments


@settings(max_examples=30, deadline=None)
@given(answer_=fragmented_answers(), stream=st.booleans())
async def test_fragmented_answer_yields_the_same_status_and_body(
    answer_: tuple[int, bytes, list[bytes]], stream: bool
) -> None:
    status, body, fragments = answer_

    async def handler(peer: Peer) -> None:
        await peer.request()
        for fragment in fragments:
            await peer.send(fragment)
            await asyncio.sleep(0.001)
        await peer.until_eof()

    client = HttpClient()
    try:
        async with RawServer(handler) as server:
            response = await client.request("GET", server.origin, "/v1/x", stream=stream)
            assert response.status == status
            if stream:
                received = b"".join(await pieces_of(response))
            else:
                received = await response.read()
            response.release()
            assert received == body
    finally:
        await client.aclose()


# -- backpressure -------------------------------------------------------------------------------


async def test_unread_stream_stops_the_upstream_then_arrives_intact(client: HttpClient) -> None:
    total, piece = 32 * MiB, 64 * 1024
    data = hashlib.shake_256(b"loopgate").digest(total)
    sent = 0

    async def handler(peer: Peer) -> None:
        nonlocal sent
        await peer.request()
        await peer.send(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        for at in range(0, total, piece):
            await peer.send(data[at : at + piece])  # drain() blocks once the client stops reading
            sent += piece
        await peer.until_eof()

    async with RawServer(handler) as server:
        timeouts = Timeouts(read=0.5)
        response = await client.request(
            "GET", server.origin, "/v1/big", timeouts=timeouts, stream=True
        )
        last = -1
        while sent != last:  # until the server is stuck in drain()
            last = sent
            await asyncio.sleep(0.2)
        assert sent < total
        await asyncio.sleep(0.6)  # a slow reader is not a stalled upstream: no read timeout
        pieces = await pieces_of(response)
        assert MiB < len(pieces[0]) < 2 * MiB  # what waited unread: about the high-water mark
        assert b"".join(pieces) == data
        response.release()


async def test_stream_read_whole_past_the_high_water_mark(client: HttpClient) -> None:
    # The gateway reads a streamed request's non-200 answer with read(): pausing must not stick.
    body = hashlib.shake_256(b"error page").digest(4 * MiB)
    async with RawServer(keep_answering(answer(body, status=500))) as server:
        response = await client.request("POST", server.origin, "/v1/x", stream=True)
        async with asyncio.timeout(10):
            assert await response.read() == body
        response.release()
        async with asyncio.timeout(10):
            assert await fetch(client, server.origin) == body
        assert server.connections == 1


# -- errors -------------------------------------------------------------------------------------


async def test_refused_connection_is_a_connect_error(client: HttpClient) -> None:
    with refusing_port() as port, pytest.raises(ConnectError):
        await client.request("GET", Origin.parse(f"http://127.0.0.1:{port}"), "/v1/x")


async def test_garbage_instead_of_http_is_a_protocol_error(client: HttpClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await peer.until_eof()

    async with RawServer(handler) as server:
        with pytest.raises(ProtocolError):
            await client.request("GET", server.origin, "/v1/x")


async def test_close_mid_body_is_a_protocol_error_from_read(client: HttpClient) -> None:
    async with RawServer(cut_short(b"0123456789", promised=100)) as server:
        response = await client.request("GET", server.origin, "/v1/x")
        with pytest.raises(ProtocolError):
            await response.read()
        response.release()


async def test_close_mid_body_is_a_protocol_error_from_iter_any(client: HttpClient) -> None:
    async with RawServer(cut_short(b"0123456789", promised=100)) as server:
        response = await client.request("GET", server.origin, "/v1/x", stream=True)
        pieces = response.iter_any()
        assert await anext(pieces) == b"0123456789"  # what came is handed over first
        with pytest.raises(ProtocolError):
            await anext(pieces)
        response.release()


async def test_close_before_answer_on_new_connection_is_not_retried(client: HttpClient) -> None:
    async with RawServer(answer_then_hang_up(answered=0)) as server:
        with pytest.raises(ConnectError):
            await client.request("GET", server.origin, "/v1/x")
        assert server.connections == 1
        assert len(server.heads) == 1


async def test_close_before_answer_on_reused_connection_is_retried_once(
    client: HttpClient,
) -> None:
    async with RawServer(answer_then_hang_up(answered=1)) as server:
        assert await fetch(client, server.origin) == b"ok"
        with pytest.raises(ConnectError):
            await client.request("GET", server.origin, "/v1/x")
        assert server.connections == 2
        assert len(server.heads) == 3  # the answered one, the one cut off, its one retry


# -- timeouts -----------------------------------------------------------------------------------


async def test_no_answer_within_read_timeout_is_a_read_timeout(client: HttpClient) -> None:
    gone = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.until_eof()
        gone.set()

    async with RawServer(handler) as server:
        with pytest.raises(ReadTimeout) as caught:
            await client.request("GET", server.origin, "/v1/x", timeouts=Timeouts(read=0.2))
        assert isinstance(caught.value, TimeoutError)
        await asyncio.wait_for(gone.wait(), 5)  # the abandoned request was hung up


async def test_stalled_stream_is_a_read_timeout_from_iter_any(client: HttpClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        await peer.until_eof()

    async with RawServer(handler) as server:
        timeouts = Timeouts(read=0.3)
        response = await client.request(
            "GET", server.origin, "/v1/x", timeouts=timeouts, stream=True
        )
        pieces = response.iter_any()
        assert await anext(pieces) == b"data: one\n\n"
        with pytest.raises(ReadTimeout):
            await anext(pieces)
        response.release()


async def test_total_timeout_fires_while_bytes_keep_trickling(client: HttpClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
        for _ in range(200):  # 10 s in all, a byte well within every read timeout
            await peer.send(b".")
            await asyncio.sleep(0.05)

    async with RawServer(handler) as server:
        timeouts = Timeouts(read=1.0, total=0.5)
        response = await client.request("GET", server.origin, "/v1/x", timeouts=timeouts)
        with pytest.raises(ReadTimeout):
            await response.read()
        response.release()


async def test_unanswered_connect_is_a_connect_timeout(client: HttpClient) -> None:
    with unanswered_port() as port:
        origin = Origin.parse(f"http://127.0.0.1:{port}")
        with pytest.raises(ConnectTimeout) as caught:
            await client.request("GET", origin, "/v1/x", timeouts=Timeouts(connect=0.3))
        assert isinstance(caught.value, TimeoutError)
        assert client.pool_for(origin).opened == 0


# -- cancellation and release -------------------------------------------------------------------


async def test_cancelled_request_hangs_up(client: HttpClient) -> None:
    asked, gone = asyncio.Event(), asyncio.Event()
    async with RawServer(asked_then_gone(asked, gone)) as server:
        task = asyncio.create_task(client.request("GET", server.origin, "/v1/x"))
        await asyncio.wait_for(asked.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(gone.wait(), 2)
        assert client.pool_for(server.origin).idle == []


@pytest.mark.parametrize("how", ["close", "release"])
async def test_leaving_a_stream_midway_hangs_up(client: HttpClient, how: str) -> None:
    # close() abandons on purpose; release() of an unfinished answer cannot reuse the
    # connection either (the rest would still arrive on it).
    asked, gone = asyncio.Event(), asyncio.Event()
    first = CHUNKED_HEAD + chunk(b"data: one\n\n")
    async with RawServer(asked_then_gone(asked, gone, head=first)) as server:
        response = await client.request("GET", server.origin, "/v1/x", stream=True)
        assert await anext(response.iter_any()) == b"data: one\n\n"
        response.close() if how == "close" else response.release()
        await asyncio.wait_for(gone.wait(), 2)
        assert client.pool_for(server.origin).idle == []


async def test_released_answer_returns_its_connection_to_the_pool(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        pool = client.pool_for(server.origin)
        response = await client.request("GET", server.origin, "/v1/x")
        assert await response.read() == b"ok"
        assert pool.idle == []
        response.release()
        assert len(pool.idle) == 1
        assert await fetch(client, server.origin) == b"ok"
        assert server.connections == 1
        assert pool.opened == 1


async def test_answer_released_after_close_of_the_client_is_closed() -> None:
    asked, gone = asyncio.Event(), asyncio.Event()
    async with RawServer(asked_then_gone(asked, gone, head=answer(b"ok"))) as server:
        client = HttpClient()
        response = await client.request("GET", server.origin, "/v1/x")
        await client.aclose()  # an answer is still being read
        assert await response.read() == b"ok"
        response.release()
        await asyncio.wait_for(gone.wait(), 2)
        assert client.pool_for(server.origin).idle == []


async def test_closed_client_refuses_requests(client: HttpClient) -> None:
    await client.aclose()
    with refusing_port() as port, pytest.raises(ConnectError, match="closed"):
        await client.request("GET", Origin.parse(f"http://127.0.0.1:{port}"), "/v1/x")


# -- interim and empty answers ------------------------------------------------------------------


async def test_interim_answers_are_skipped(client: HttpClient) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    async with RawServer(keep_answering(interim + answer(b"ok", "X-Real: yes"))) as server:
        response = await client.request("POST", server.origin, "/v1/x", body=b"{}")
        assert response.status == 200
        names = [name for name, _ in response.headers]
        assert b"X-Real" in names
        assert b"Link" not in names
        assert await response.read() == b"ok"
        response.release()


async def test_no_content_answer_completes_and_keeps_the_connection(client: HttpClient) -> None:
    async with RawServer(keep_answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
        for _ in range(2):
            response = await client.request("DELETE", server.origin, "/v1/x")
            assert response.status == 204
            assert await response.read() == b""
            response.release()
        assert server.connections == 1


# -- request head -------------------------------------------------------------------------------


async def test_request_head_has_host_length_and_given_headers(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        body = b'{"model": "m"}'
        headers = [("Content-Type", "application/json"), ("X-Request-Id", "r-1")]
        response = await client.request("POST", server.origin, "/v1/x", body=body, headers=headers)
        await response.read()
        response.release()
        assert await fetch(client, server.origin, "/health") == b"ok"
        post, get = server.heads
        assert post.startswith(b"POST /v1/x HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in post
        assert f"\r\nContent-Length: {len(body)}\r\n".encode() in post
        assert b"\r\nContent-Type: application/json\r\n" in post
        assert b"\r\nX-Request-Id: r-1\r\n" in post
        assert server.bodies[0] == body
        assert get.startswith(b"GET /health HTTP/1.1\r\n")
        assert b"content-length" not in get.lower()


async def test_empty_post_still_sends_content_length(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        response = await client.request("POST", server.origin, "/v1/x")
        await response.read()
        response.release()
        assert b"\r\nContent-Length: 0\r\n" in server.heads[0]


@pytest.mark.parametrize(
    "header", [("X-Evil", "a\r\nX-Injected: 1"), ("X-Evil", "a\nb"), ("X-Evil\r\nX", "a")]
)
async def test_line_break_in_a_header_is_refused_before_sending(
    client: HttpClient, header: tuple[str, str]
) -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        with pytest.raises(ValueError, match="line break"):
            await client.request("GET", server.origin, "/v1/x", headers=[header])
        assert await fetch(client, server.origin) == b"ok"
        assert len(server.heads) == 1  # only the good request reached the server
        assert b"Injected" not in server.heads[0]


async def test_fetch_reads_a_page_whole_and_keeps_the_connection(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"up", status=503))) as server:
        assert await client.fetch(server.origin, "/health", 2) == (503, b"up")
        assert await client.fetch(server.origin, "/health", 2) == (503, b"up")
        assert server.connections == 1


async def test_fetch_gives_up_at_its_limit(client: HttpClient) -> None:
    asked, gone = asyncio.Event(), asyncio.Event()
    async with RawServer(asked_then_gone(asked, gone)) as server:
        with pytest.raises(ReadTimeout):
            await client.fetch(server.origin, "/health", 0.2)
        await asyncio.wait_for(gone.wait(), 2)  # and hangs up


async def test_head_is_refused_rather_than_misread(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        with pytest.raises(ValueError, match="HEAD"):
            await client.request("HEAD", server.origin, "/v1/x")
        assert server.heads == []


async def test_origin_path_prefix_goes_before_the_route(client: HttpClient) -> None:
    async with RawServer(keep_answering(answer(b"ok"))) as server:
        origin = Origin.parse(f"http://127.0.0.1:{server.port}/prefix/")
        assert await fetch(client, origin, "/v1/x") == b"ok"
        assert server.heads[0].startswith(b"GET /prefix/v1/x HTTP/1.1\r\n")


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.asynccontextmanager
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[Origin]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"over tls: " + await request.read())

    app = web.Application()
    app.router.add_post("/v1/x", hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    async with web_server(app, context) as port:
        yield Origin.parse(f"https://127.0.0.1:{port}")


async def test_https_origin_with_a_trusted_certificate(certificate: tuple[Path, Path]) -> None:
    client = HttpClient(ssl_context=ssl.create_default_context(cafile=certificate[0]))
    try:
        async with tls_server(certificate) as origin:
            for _ in range(2):
                response = await client.request("POST", origin, "/v1/x", body=b"hi")
                assert response.status == 200
                assert await response.read() == b"over tls: hi"
                response.release()
            assert client.pool_for(origin).opened == 1
    finally:
        await client.aclose()


async def test_https_origin_with_an_untrusted_certificate_is_a_connect_error(
    client: HttpClient, certificate: tuple[Path, Path]
) -> None:
    async with tls_server(certificate) as origin:
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.request("POST", origin, "/v1/x", body=b"hi")


# -- origins ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "prefix", "host_header"),
    [
        ("http://upstream", "upstream", 80, "", "upstream"),
        ("https://upstream", "upstream", 443, "", "upstream"),
        ("http://upstream:80/", "upstream", 80, "", "upstream"),
        ("https://upstream:443", "upstream", 443, "", "upstream"),
        ("http://upstream:8000", "upstream", 8000, "", "upstream:8000"),
        ("https://upstream:80", "upstream", 80, "", "upstream:80"),
        ("http://10.0.0.5:8000/vllm/a/", "10.0.0.5", 8000, "/vllm/a", "10.0.0.5:8000"),
        ("http://[::1]:8000", "::1", 8000, "", "[::1]:8000"),
        ("http://[::1]", "::1", 80, "", "[::1]"),
        ("https://[fe80::1]:8443/v", "fe80::1", 8443, "/v", "[fe80::1]:8443"),
    ],
)
def test_origin_parse(url: str, host: str, port: int, prefix: str, host_header: str) -> None:
    origin = Origin.parse(url)
    assert (origin.host, origin.port, origin.prefix, origin.host_header) == (
        host,
        port,
        prefix,
        host_header,
    )
    assert origin.key == (url.split(":")[0], host, port)


@pytest.mark.parametrize(
    "url", ["ftp://upstream", "upstream:8000", "unix:///tmp/vllm.sock", "http://", "//upstream"]
)
def test_origin_parse_refuses_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        Origin.parse(url)
