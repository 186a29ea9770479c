"""The upstream HTTP/1.1 client: keep-alive connections on asyncio protocols, parsed by httptools.

Why not aiohttp's client: on the hot path it cost about 100 us of CPU per request, a third of
the gateway's whole budget (loadtests/bench_gateway.py, profiled with py-spy). The gateway
needs little of it: POST and GET to upstreams it knows, bodies whole or streamed, keep-alive,
timeouts. This does that and nothing else, with llhttp (through httptools, the parser uvicorn
uses) doing the parsing.

Timeouts: `connect` bounds opening a connection; `read` bounds the wait for the first byte
of the answer and every gap between bytes after it (a stalled stream); `total` bounds the
whole exchange. Failures are told apart because the gateway acts differently on each:
`ConnectError` means nothing was answered (safe to try another endpoint), `ProtocolError` that
the upstream broke its answer, and `ConnectTimeout`/`ReadTimeout` are `TimeoutError`s.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# Buffered stream bytes above which the upstream socket stops being read (backpressure from
# a slow client reaches the upstream instead of growing memory), and below which it resumes.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18
# A whole answer larger than this is refused rather than held in memory.
MAX_BODY_BYTES = 256 << 20


class ClientError(Exception):
    """Any failure of an upstream exchange that is not a timeout."""


class ConnectError(ClientError):
    """No answer began: the connection failed, or was closed before a byte came back."""


class ProtocolError(ClientError):
    """The upstream broke its answer: not HTTP, cut off midway, or too large."""


class ConnectTimeout(TimeoutError):
    """The connection could not be opened in time."""


class ReadTimeout(TimeoutError):
    """The answer did not begin, or stalled, or did not finish in time."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None waits forever."""

    connect: float | None = 10.0
    read: float | None = 60.0
    total: float | None = None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint URL points: scheme, host, port and the path prefix before our routes."""

    scheme: str
    host: str
    port: int
    prefix: str
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        """`http://host:port/prefix` split once, when the pool is built."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, parts.path.rstrip("/"), host_header)

    @property
    def key(self) -> tuple[str, str, int]:
        """Connections are shared by scheme, host and port."""
        return (self.scheme, self.host, self.port)


class Response:
    """An answer whose status line and headers have arrived; the body follows.

    Read it whole with `read()` or piece by piece with `iter_any()`, then `release()` the
    connection for reuse; `close()` instead drops the connection, which is how an upstream
    learns that the request was abandoned.
    """

    __slots__ = (
        "_buffer",
        "_buffered",
        "_conn",
        "_deadline",
        "_done",
        "_error",
        "_paused",
        "_timer",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, deadline: float | None) -> None:
        self._conn = conn
        self._deadline = deadline  # loop time when the whole exchange must be over
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._done = False  # the whole body has arrived
        self._error: BaseException | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []

    async def read(self) -> bytes:
        """The whole body."""
        # A stream read whole after all (an error answer to a streamed request): reading must
        # not stay paused, and the body is held to MAX_BODY_BYTES like any whole answer.
        if self._conn.response is self:
            self._conn.streaming = False
        if self._paused:
            self._paused = False
            self._conn.resume()
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._error is not None:
            raise self._error
        body = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return body

    def iter_any(self) -> Response:
        """Iterate over body bytes as they arrive (each item is what is buffered by then)."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            await self._wait()
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._conn.resume()
        return data

    def release(self) -> None:
        """Done with the answer: keep the connection for the next request if it can be."""
        self._stop_timer()
        conn = self._conn
        if conn.response is self:
            conn.response = None
            if self._done and self._error is None and conn.keep_alive and not conn.closed:
                if self._paused:  # the whole body came in, some of it unread: read on
                    self._paused = False
                    conn.resume()
                conn.pool.put_idle(conn)
            else:
                conn.close()

    def close(self) -> None:
        """Drop the connection (the upstream sees the request abandoned)."""
        self._stop_timer()
        conn = self._conn
        if conn.response is self:
            conn.response = None
            conn.close()

    # -- fed by the connection --------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused:
            if self._conn.streaming:
                self._paused = True
                self._conn.pause()
            elif self._buffered > MAX_BODY_BYTES:
                self._fail(ProtocolError(f"answer larger than {MAX_BODY_BYTES} bytes"))
                return
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._stop_timer()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._done:
            self._error = error
            self._stop_timer()
            self._conn.close()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._conn.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        except BaseException:
            self._waiter = None
            raise

    # -- timeouts ---------------------------------------------------------------------------

    def _start_timer(self) -> None:
        conn = self._conn
        if conn.read_timeout is None and self._deadline is None:
            return
        self._timer = conn.loop.call_at(self._next_check(conn.last_read), self._check_time)

    def _next_check(self, last_read: float) -> float:
        read_timeout = self._conn.read_timeout
        at = last_read + read_timeout if read_timeout is not None else float("inf")
        return at if self._deadline is None else min(at, self._deadline)

    def _check_time(self) -> None:
        # Lazy: data arriving only moves `last_read`; the timer looks when it fires.
        self._timer = None
        conn = self._conn
        now = conn.loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._fail(ReadTimeout("the upstream did not finish its answer in time"))
            return
        if self._paused:  # our reader is slow, not the upstream: the clock restarts on resume
            conn.last_read = now
        at = self._next_check(conn.last_read)
        if at <= now:
            began = "stalled" if self.status else "did not answer"
            self._fail(ReadTimeout(f"the upstream {began} for {conn.read_timeout:g}s"))
            return
        self._timer = conn.loop.call_at(at, self._check_time)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream and the answer in progress on it."""

    def __init__(self, pool: _OriginPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.keep_alive = True
        self.streaming = False
        self.received = False  # any byte of the current answer came back
        self.has_length = False  # Content-Length or chunked: the body does not end at EOF
        self.last_read = 0.0
        self.idle_since = 0.0
        self.read_timeout: float | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self.received = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(ProtocolError(f"the upstream answered with invalid HTTP: {exc}"))
        except httptools.HttpParserUpgrade:
            response._fail(ProtocolError("the upstream switched protocols"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self.response
        if response is None or response._done or response._error is not None:
            return
        if response.status and not self.has_length:
            response._finish()  # an answer whose body is ended by closing the connection
        elif not self.received:
            why = f": {exc}" if exc else ""
            response._fail(ConnectError(f"the upstream closed the connection{why}"))
        else:
            response._fail(ProtocolError("the upstream closed the connection mid-answer"))

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None:
            response.headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                self.has_length = True

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            response.headers.clear()
            self.has_length = False
            return
        response.status = status
        self.keep_alive = self.parser.should_keep_alive()
        response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None and response.status:
            response._finish()

    # -- used by the client -----------------------------------------------------------------

    def begin(self, response: Response, streaming: bool, read_timeout: float | None) -> None:
        self.response = response
        self.streaming = streaming
        self.received = False
        self.has_length = False
        self.read_timeout = read_timeout
        self.last_read = self.loop.time()
        response._start_timer()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class _OriginPool:
    """Idle keep-alive connections to one scheme://host:port, most recently used first."""

    def __init__(
        self, origin: Origin, ssl_context: ssl.SSLContext | None, keepalive_s: float, max_idle: int
    ) -> None:
        self.origin = origin
        self.ssl = ssl_context
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle
        self.idle: list[_Connection] = []
        self.opened = 0  # connections made, for tests and the curious

    def take_idle(self, now: float) -> _Connection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            fresh = now - conn.idle_since < self.keepalive_s
            if fresh and not conn.closed and transport is not None and not transport.is_closing():
                return conn
            conn.close()
        return None

    def put_idle(self, conn: _Connection) -> None:
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    async def connect(self, loop: asyncio.AbstractEventLoop, limit_s: float | None) -> _Connection:
        conn = _Connection(self, loop)
        origin = self.origin
        try:
            async with asyncio.timeout(limit_s):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=self.ssl,
                    server_hostname=origin.host if self.ssl is not None else None,
                )
        except TimeoutError as exc:
            conn.close()
            raise ConnectTimeout(
                f"could not connect to {origin.host_header} within {limit_s:g}s"
            ) from exc
        except OSError as exc:  # refused, unreachable, name unknown, TLS handshake failed
            conn.close()
            raise ConnectError(f"could not connect to {origin.host_header}: {exc}") from exc
        self.opened += 1
        return conn

    def close(self) -> None:
        self.max_idle = 0  # answers still in progress close as they are released
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


class HttpClient:
    """Pooled keep-alive HTTP/1.1 connections to upstreams; one per process, opened in lifespan."""

    def __init__(
        self,
        *,
        keepalive_s: float = 4.0,
        max_idle_per_origin: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Idle connections are dropped before the upstream's own keep-alive timeout is likely
        # to close them (uvicorn's, which vLLM uses, is 5 s), so a request seldom meets one
        # that is just being closed; when it does, it is retried on a new connection.
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _OriginPool] = {}
        self._closed = False

    def pool_for(self, origin: Origin) -> _OriginPool:
        """The connections to one origin (made on first use)."""
        pool = self._pools.get(origin.key)
        if pool is None:
            context = None
            if origin.scheme == "https":
                context = self._ssl or ssl.create_default_context()
            pool = _OriginPool(origin, context, self.keepalive_s, self.max_idle)
            self._pools[origin.key] = pool
        return pool

    async def request(
        self,
        method: str,
        origin: Origin,
        path: str,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        timeouts: Timeouts = Timeouts(),
        stream: bool = False,
    ) -> Response:
        """Send one request; returns once the status line and headers are in.

        `stream` marks an answer that will be read with `iter_any()`: reading pauses while
        too much of it waits unread.
        """
        if self._closed:
            raise ConnectError("the client is closed")
        if method == "HEAD":  # its answer's Content-Length promises no body: not parsed here
            raise ValueError("HEAD requests are not supported")
        head = self._head(method, origin, path, body, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total if timeouts.total is not None else None
        pool = self.pool_for(origin)
        conn = pool.take_idle(loop.time())
        reused = conn is not None
        if conn is None:
            conn = await self._connect(pool, loop, timeouts.connect, deadline)
        try:
            return await self._exchange(conn, head, body, stream, timeouts.read, deadline)
        except ConnectError:
            if not reused:
                raise
        # A kept-alive connection the upstream closed as it was being reused: nothing was
        # processed, so the request goes once more on a new connection.
        conn = await self._connect(pool, loop, timeouts.connect, deadline)
        return await self._exchange(conn, head, body, stream, timeouts.read, deadline)

    async def _connect(
        self,
        pool: _OriginPool,
        loop: asyncio.AbstractEventLoop,
        limit_s: float | None,
        deadline: float | None,
    ) -> _Connection:
        if deadline is not None:
            left = deadline - loop.time()
            limit_s = left if limit_s is None else min(limit_s, left)
        return await pool.connect(loop, limit_s)

    @staticmethod
    def _head(
        method: str, origin: Origin, path: str, body: bytes, headers: Iterable[tuple[str, str]]
    ) -> bytes:
        lines = [f"{method} {origin.prefix}{path} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} has a line break in it")
            lines.append(f"{name}: {value}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _exchange(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes,
        stream: bool,
        read_timeout: float | None,
        deadline: float | None,
    ) -> Response:
        response = Response(conn, deadline)
        conn.begin(response, stream, read_timeout)
        assert conn.transport is not None
        conn.transport.write(head + body if body else head)
        try:
            while not response.status:
                if response._error is not None:
                    raise response._error
                await response._wait()
        except BaseException:  # failed, or cancelled: the upstream must see it abandoned
            response.close()
            raise
        return response

    async def fetch(self, origin: Origin, path: str, limit_s: float) -> tuple[int, bytes]:
        """GET a small page whole (health, /metrics), all of it within `limit_s`."""
        timeouts = Timeouts(connect=limit_s, read=limit_s, total=limit_s)
        response = await self.request("GET", origin, path, timeouts=timeouts)
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def aclose(self) -> None:
        """Close every idle connection; answers in progress close as they are released."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks
