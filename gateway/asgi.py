"""Raw ASGI plumbing for the raw routes (proxy, feedback): the headers they read, the body,
client departure, and answers written without a framework."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import BodyTooLarge, GatewayError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# How long a request waits before a task starts watching for its client leaving.
WATCH_DELAY_S = 0.05

# A client's X-Request-Id becomes an event's response id and Kafka key when a request fails
# early: only a short token of these characters is taken; anything else is replaced.
_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:+=/-"
_MAX_ID = 128
# W3C trace context: version-traceid-parentid-flags, lowercase hex (later versions may
# append fields). Checked with a few slices rather than a regex: ~5x cheaper per request.
_HEX_AND_DASH = b"0123456789abcdef-"
_NO_TRACE = b"0" * 32


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class RequestHeaders:
    """The request headers the gateway reads, found in one pass."""

    __slots__ = (
        "attributes",
        "authorization",
        "authorizations",
        "consent",
        "content_length",
        "content_type",
        "qa_variant",
        "request_id",
        "traceparent",
        "tracestate",
        "user",
    )

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.request_id = self.user = self.traceparent = self.tracestate = None
        self.qa_variant: str | None = None
        self.authorization: bytes | None = None
        self.authorizations = 0  # more than one: refused (which one counts would be a guess)
        self.attributes: dict[str, str] | None = None
        self.consent: str | None = None
        self.content_length: int | None = None
        self.content_type: bytes | None = None
        for name, value in raw:
            if name.startswith(b"x-loopgate-attr-"):
                if self.attributes is None:
                    self.attributes = {}
                key = name[16:].decode("latin-1")
                self.attributes[key] = value.decode("latin-1")[:256]
            elif name == b"authorization":
                self.authorization = value
                self.authorizations += 1
            elif name == b"x-loopgate-variant":
                self.qa_variant = value.decode("latin-1")[:128]
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else None
            elif name == b"x-request-id":
                if 0 < len(value) <= _MAX_ID and not value.translate(None, _ID_CHARS):
                    self.request_id = value.decode("ascii")
            elif name == b"x-loopgate-user":
                self.user = value.decode("latin-1")[:256]
            elif name == b"x-loopgate-consent":
                self.consent = value.decode("latin-1")
            elif name == b"traceparent":
                if valid_traceparent(value):
                    self.traceparent = value.decode("ascii")
            elif name == b"tracestate":
                self.tracestate = value.decode("latin-1")
            elif name == b"content-type" and self.content_type is None:
                self.content_type = value  # the first, as Starlette's Headers.get reads it


def valid_traceparent(value: bytes) -> bool:
    """True for a W3C traceparent whose trace id is usable (not all zeros, not version ff)."""
    size = len(value)
    if size != 55 and (size < 56 or value[55] != 0x2D or value[:2] == b"00"):
        return False  # version 00 is exactly 55 bytes; later ones add "-..." fields
    return (
        value[2] == value[35] == value[52] == 0x2D  # the dashes, and no others among the fields
        and value.count(b"-", 0, 55) == 3
        and not value[:55].translate(None, _HEX_AND_DASH)
        and value[:2] != b"ff"
        and value[3:35] != _NO_TRACE
        and value.isascii()
    )


def trace_id_of(traceparent: str) -> str:
    """The trace id field of a traceparent that valid_traceparent accepted."""
    return traceparent[3:35]


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    first = await receive()
    if first["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = first.get("body", b"")
    if not first.get("more_body"):
        if len(body) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    close: bool = False,
    extra: dict[str, str] | None = None,
) -> None:
    """A whole JSON answer; `close`: the connection ends with it (a body may be left unread);
    `extra`: more headers (an error's Retry-After)."""
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append(_CLOSE)
    if extra:
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except OSError:  # the client is gone
        pass


async def refuse(send: Send, err: GatewayError) -> None:
    """Answer with the error before reading the body, and close: what may follow is never read."""
    await send_json(send, err.status, err.body(), close=True)


class DisconnectWatch:
    """Cancels the request's task when the client goes away, so the upstream call is cut too.

    Watching takes a task of its own. It starts only once the request has waited `delay_s`:
    most answers that fast never pay for one, and a client that leaves sooner is still seen
    then (uvicorn reports a disconnect that already happened), so the upstream is cut at
    most `delay_s` late.
    """

    __slots__ = ("_handle", "_receive", "_task", "_watcher", "done", "gone")

    def __init__(self, receive: Receive, delay_s: float = WATCH_DELAY_S) -> None:
        self.gone = False
        self.done = False
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self._watcher: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = task.get_loop().call_later(delay_s, self._start)

    def _start(self) -> None:
        self._handle = None
        if not self.done:
            self._watcher = asyncio.create_task(self._watch(), name="loopgate-disconnect-watch")

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    self.gone = True
                    self._task.cancel()
                return

    def close(self) -> None:
        """Stop watching; the answer is complete."""
        self.done = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._watcher is not None:
            self._watcher.cancel()
