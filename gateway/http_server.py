"""uvicorn's httptools protocol with the gateway's connection limits and corked writes.

Limits (`limits.*` in Settings, docs/hardening.md): a request head larger than
`max_header_bytes` is refused with 431 before it is parsed; a head not complete within
`header_timeout_s` of its first byte (or of the connection opening) gets 408; so does a body
that pauses longer than `body_timeout_s` between pieces; and `max_connections_per_client`
caps the connections one address may hold. Each check costs a comparison per read; timers
run only for connections that are waiting on their client.

Writes: uvicorn writes an answer's status line and headers, then its body, with two system
calls: two TCP segments on the wire and two wake-ups of the client for every request. Here
the writes a connection makes during one iteration of the event loop are held and sent as
one when the iteration ends. Nothing waits longer for it (no other code would run before
they went out), streamed chunks still leave as they come, and the gateway spends ~15% less
CPU per request (loadtests/bench_gateway.py). Once a streamed answer has started, its chunks
are written straight through (one write per chunk anyway: no flush callback per chunk).

`loopgate serve` runs uvicorn with `http="gateway.http_server:CorkedHttpToolsProtocol"`.
That subclasses a private uvicorn class: pyproject.toml caps uvicorn to the tested range,
and if the class's shape differs anyway, `CorkedHttpToolsProtocol` is uvicorn's own
protocol, with a warning in the log (and none of the limits above).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.config import LimitsConfig
from gateway.errors import error_body

log = logging.getLogger(__name__)


class CorkedTransport:
    """A transport whose writes are buffered until the current loop iteration ends.

    Once an answer has gone out in part and is not complete (a stream), its further writes
    (one per chunk) go straight through until `uncork`: holding each for the end of the
    iteration would only cost a callback per chunk.
    """

    __slots__ = ("_buffer", "_direct", "_loop", "_protocol", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        protocol: HttpToolsProtocol | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._protocol = protocol  # whose answer in progress makes writes direct
        self._direct = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold the bytes; the first write of an iteration schedules the flush."""
        if not data:
            return
        if self._direct:
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        """Hold each piece, as write does."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send what is held, in one write."""
        buffer = self._buffer
        if not buffer:
            return
        self._buffer = []
        if self._transport.is_closing():
            return  # the peer is gone: asyncio drops writes to a closed transport too
        self._transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))
        protocol = self._protocol
        if protocol is not None:
            cycle = protocol.cycle
            if cycle is not None and cycle.response_started and not cycle.response_complete:
                self._direct = True  # a streamed answer: its chunks leave as they are written

    def uncork(self) -> None:
        """The answer is complete: writes are held again (the next answer's head and body)."""
        self._direct = False

    def get_write_buffer_size(self) -> int:
        """Bytes held here and in the transport's own buffer."""
        held = sum(len(piece) for piece in self._buffer)
        return held + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        """Send what is held, then half-close."""
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Send what is held, then close (an answer written just before closing still goes)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop what is held and the connection."""
        self._buffer = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, get_extra_info, pause_reading...) is the transport's.
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a CorkedTransport, with the connection limits."""

    # uvicorn's own fields stay in the instance dict; ours in slots (a smaller dict per
    # connection: thousands of streams hold thousands of connections).
    __slots__ = (
        "_body_timeout", "_corked", "_counted", "_head_bytes", "_head_started", "_head_timeout",
        "_in_head", "_last_body", "_max_head", "_per_client", "_timer",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = _limits(self.config)
        self._max_head = limits.max_header_bytes
        self._head_timeout = limits.header_timeout_s
        self._body_timeout = limits.body_timeout_s
        self._per_client = limits.max_connections_per_client
        self._counted: str | None = None  # the address this connection is counted under
        self._in_head = True  # between requests, or reading a request's head
        self._head_bytes = 0
        self._head_started: float | None = None
        self._last_body = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._corked = corked = CorkedTransport(cast(asyncio.Transport, transport), self.loop, self)
        super().connection_made(cast(asyncio.Transport, corked))
        if self._per_client is not None and self.client is not None:
            clients = _clients(self.server_state)
            host = self.client[0]
            if clients[host] >= self._per_client:
                self._refuse(503, "too many connections from this address", "too_many_connections")
                return
            clients[host] += 1
            self._counted = host
        # A new connection must send a request head in time, even its first byte.
        self._head_started = self.loop.time()
        self._arm(self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted is not None:
            clients = _clients(self.server_state)
            clients[self._counted] -= 1
            if clients[self._counted] <= 0:
                del clients[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            end = data.find(b"\r\n\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + 4)
            if size > self._max_head:
                # Refused before parsing: the parser would hold all of it.
                self._refuse(431, "request headers are too large", "headers_too_large")
                return
            self._head_bytes = size
        super().data_received(data)
        # A whole request in one read (the common case) needs neither clock nor timer.
        if self._in_head:
            if self._head_bytes and self._head_started is None:  # a head begun, not ended
                self._head_started = self.loop.time()
                if self._timer is None:
                    self._arm(self._head_timeout)
        elif self.cycle is not None and self.cycle.more_body:
            self._last_body = self.loop.time()
            if self._timer is None:
                self._arm(self._body_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = None
        if self._timer is not None:
            # The head came in time: no timer while the answer runs (a body still to come
            # arms its own in data_received; an idle connection is uvicorn's keep-alive's).
            self._timer.cancel()
            self._timer = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._corked.uncork()
        super().on_response_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._check_waits)

    def _check_waits(self) -> None:
        """A timer: refuse a client that is too slow with its head or body, or look later."""
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        cycle: RequestResponseCycle | None = self.cycle
        if self._in_head:
            if self._head_started is None:
                return  # idle between requests: uvicorn's keep-alive timeout governs
            if cycle is not None and not cycle.response_complete:
                self._arm(self._head_timeout)  # a pipelined head waits for the answer before it
                return
            left = self._head_started + self._head_timeout - now
            if left > 0:
                self._arm(left)
            else:
                self._refuse(408, "request headers were not sent in time", "request_timeout")
            return
        if cycle is None or not cycle.more_body or cycle.response_complete:
            return
        if self.flow.read_paused:  # the app is not reading yet: the client is not to blame
            self._last_body = now
        left = self._last_body + self._body_timeout - now
        if left > 0:
            self._arm(left)
            return
        # The app sees a disconnect (and stops waiting); the client gets a 408 if it can.
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self._refuse(408, "the request body stalled", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer with an OpenAI error and close the connection."""
        body = error_body(message, "invalid_request_error", None, code)
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(
            status, b"Service Unavailable"
        )
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, reason)
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()


def _limits(config: Any) -> LimitsConfig:
    """The gateway's limits, from the app uvicorn serves (found once per server config)."""
    cached: LimitsConfig | None = getattr(config, "_loopgate_limits", None)
    if cached is not None:
        return cached
    limits = LimitsConfig()
    app = config.loaded_app
    for _ in range(8):  # HotPath, uvicorn's proxy-headers middleware, ...: a few layers at most
        settings = getattr(getattr(app, "state", None), "settings", None)
        if settings is not None:
            limits = settings.limits
            break
        app = getattr(app, "app", None)
        if app is None:
            break
    config._loopgate_limits = limits
    return limits


def _clients(server_state: Any) -> Counter[str]:
    """Open connections by client address, for the whole server (one per worker process)."""
    clients: Counter[str] | None = getattr(server_state, "_loopgate_clients", None)
    if clients is None:
        clients = Counter()
        server_state._loopgate_clients = clients
    return clients


# What GuardedHttpToolsProtocol uses of uvicorn's private classes.
_PROTOCOL_METHODS = (
    "connection_made", "connection_lost", "data_received", "on_headers_complete",
    "on_message_complete", "on_response_complete", "send_400_response",
)  # fmt: skip
_PROTOCOL_FIELDS = ("loop", "config", "transport", "flow", "cycle", "client", "server_state")
_CYCLE_FIELDS = ("more_body", "disconnected", "message_event", "response_started",
                 "response_complete")  # fmt: skip


def compatible(base: type, cycle: type) -> bool:
    """True when uvicorn's protocol and request cycle have the members the subclass uses."""
    if not all(callable(getattr(base, name, None)) for name in _PROTOCOL_METHODS):
        return False
    init = getattr(getattr(base, "__init__", None), "__code__", None)
    cycle_init = getattr(getattr(cycle, "__init__", None), "__code__", None)
    if init is None or cycle_init is None:
        return False
    return set(_PROTOCOL_FIELDS) <= set(init.co_names) and set(_CYCLE_FIELDS) <= set(
        cycle_init.co_names
    )


def choose_protocol(base: type = HttpToolsProtocol, cycle: type = RequestResponseCycle) -> type:
    """The guarded protocol, or uvicorn's own (logged) when its private shape has changed."""
    if compatible(base, cycle):
        return GuardedHttpToolsProtocol
    log.warning(
        "uvicorn's httptools protocol differs from the tested shape: serving with uvicorn's "
        "plain protocol (no corked writes, no header size limit or client timeouts)"
    )
    return base


# Chosen once, when uvicorn imports this by name (`http=` in `loopgate serve`).
CorkedHttpToolsProtocol = choose_protocol()
