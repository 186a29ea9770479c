"""SSE relay: events forwarded as they come, the signed id swapped in, errors in-band."""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from gateway.asgi import Send
from gateway.errors import BadGateway, GatewayError, UpstreamTimeout
from gateway.exchange import Exchange
from gateway.httpclient import ClientError
from gateway.recorder import Recording
from gateway.resolver import Route
from gateway.upstream import UpstreamCall

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


# An SSE event longer than this without its blank line is not a stream we understand.
MAX_EVENT_BYTES = 4 * 1024 * 1024


class NotEventStream(Exception):
    """The upstream answered 200 to a streamed request with something that is not SSE."""


class StreamRelay(Protocol):
    """What the relay reads from the request it serves (gateway.proxy.ProxyRequest)."""

    reply: Send
    call: UpstreamCall | None
    route: Route
    ex: Exchange
    rec: Recording
    started: float
    strip_usage: bool

    def response_headers(self, overhead_s: float | None) -> list[tuple[bytes, bytes]]:
        """The answer's headers, given the gateway's own time so far."""
        ...


async def relay_stream(req: StreamRelay) -> None:
    """Forward upstream SSE events as they arrive, swapping in the signed id; errors in-band.

    Events are forwarded whole (never split, never held back for more); a usage chunk the
    client did not ask for is dropped; once the stream has started, an upstream failure
    becomes an error event the SDK raises, and the stream ends. So does a body that is not
    an event stream (checked event by event, at no extra parse).
    """
    call, ex, send = req.call, req.ex, req.reply
    assert call is not None
    headers = req.response_headers(time.perf_counter() - req.started)
    headers.extend(_SSE_HEADERS)
    ex.responded = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        await _forward_events(req, call)
        call.release()
    except (ClientError, TimeoutError, NotEventStream) as exc:
        call.fail()
        pool = req.route.pool.name
        err: GatewayError
        if isinstance(exc, TimeoutError):
            kind, err = "timeout", UpstreamTimeout(f"upstream {pool} stalled mid-stream")
        elif isinstance(exc, NotEventStream):
            kind = "bad_response"
            err = BadGateway(f"upstream {pool} answered with no event stream: {exc}")
        else:
            kind, err = "midstream", BadGateway(f"upstream {pool} broke off the stream")
        req.rec.upstream_error(pool, kind)
        req.rec.failed("error", err.status, err.message)
        # SSE has started: the error goes in-band and the stream ends (the SDK raises it).
        await send({"type": "http.response.body", "body": b"data: " + err.body() + b"\n\n"})
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _forward_events(req: StreamRelay, call: UpstreamCall) -> None:
    """The upstream's events to the client, whole, as they come; raises on what is not SSE.

    Per read: the whole events in it are checked and read one by one (_Events.read), and sent
    as the bytes that came (a slice, not a join) unless a usage chunk is dropped. Between
    reads a stream holds only what it must (no parsed chunk, no last read's bytes).
    """
    rec, send = req.rec, req.reply
    watched = rec.watched
    reader = _Events(req, call)
    pending = b""
    if not _event_stream_type(call.response.headers):
        raise NotEventStream("its content type is not text/event-stream")
    async for data in call.response.iter_any():
        if pending:
            data = pending + data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            if len(data) > MAX_EVENT_BYTES:
                raise NotEventStream("no event ended within the size limit")
            pending = data
            continue
        cut += 2
        if cut < len(data):
            pending = data[cut:]
            chunk = reader.read(data[:cut])
        else:
            pending = b""
            chunk = reader.read(data)
        data = b""
        if chunk is None:
            continue
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if watched:
            rec.chunk(chunk)
        chunk = None
    if pending.strip():
        if event_json(pending) is None and not _harmless(pending):
            raise NotEventStream("its last event is not SSE data")
        await send({"type": "http.response.body", "body": pending, "more_body": True})
        if watched:
            rec.chunk(pending)


class _Events:
    """What the relay reads in the events of a stream, one read at a time."""

    __slots__ = ("call", "content", "rec", "started", "strip_usage", "swap", "take_chunk")

    def __init__(self, req: StreamRelay, call: UpstreamCall) -> None:
        self.call = call
        self.rec = req.rec
        self.take_chunk = req.ex.take_chunk
        self.content = req.rec.content
        self.started = req.started
        self.strip_usage = req.strip_usage
        # The id replace once the first id is known (only the `id` field: the same string
        # elsewhere in the text stays).
        self.swap: tuple[bytes, bytes, bytes, bytes] | None = None

    def read(self, chunk: bytes) -> bytes | None:
        """Whole events (`chunk` ends with a blank line): each checked and read; the bytes to
        send, or None when none is left (a dropped usage chunk); raises on what is not SSE."""
        events = chunk[:-2].split(b"\n\n")
        kept: list[bytes] | None = None  # the events sent, once one is dropped
        for n, event in enumerate(events):
            start = event.find(b"data:")
            doc: Any = None
            if start >= 0:
                payload = event[start + 5 :].strip()
                if payload and payload != b"[DONE]":
                    try:
                        doc = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        doc = None
            if isinstance(doc, dict):
                if self.swap is None and "id" in doc:
                    upstream_id = str(doc["id"])
                    self.swap = _id_swap(upstream_id, self.rec.response_id(upstream_id))
                if self.take_chunk(doc) and self.content(time.perf_counter(), self.started):
                    self.call.first_token()
                if self.strip_usage and not doc.get("choices") and doc.get("usage"):
                    if kept is None:
                        kept = events[:n]
                    continue
            elif not _harmless(event):
                raise NotEventStream("an event is not SSE data")
            if kept is not None:
                kept.append(event)
        if kept is not None:
            if not kept:
                return None
            chunk = b"\n\n".join(kept) + b"\n\n"
        swap = self.swap
        if swap is not None:
            chunk = chunk.replace(swap[0], swap[1]).replace(swap[2], swap[3])
        return chunk


def _id_swap(upstream_id: str, response_id: str) -> tuple[bytes, bytes, bytes, bytes]:
    """`"id":` followed by each id, compact and with a space (as servers write either)."""
    old, new = orjson.dumps(upstream_id), orjson.dumps(response_id)
    return b'"id":' + old, b'"id":' + new, b'"id": ' + old, b'"id": ' + new


def _event_stream_type(headers: list[tuple[bytes, bytes]]) -> bool:
    """False only for a content type that says it is something else (none at all: allowed)."""
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.lower().lstrip().startswith(b"text/event-stream")
    return True


def _harmless(event: bytes) -> bool:
    """An SSE event with no JSON to read: [DONE], a comment, or fields without data."""
    for line in event.strip().split(b"\n"):
        line = line.strip()
        if not line or line.startswith((b":", b"event:", b"id:", b"retry:")):
            continue
        if line.startswith(b"data:") and line[5:].strip() == b"[DONE]":
            continue
        return False
    return True


def take_events(pending: bytes) -> tuple[list[bytes], bytes]:
    """The whole SSE events in what has arrived, and the start of the next one; raises
    NotEventStream when no event ends within the size limit (the relay and the shadow's reader)."""
    cut = pending.rfind(b"\n\n")
    if cut < 0:
        if len(pending) > MAX_EVENT_BYTES:
            raise NotEventStream("no event ended within the size limit")
        return [], pending
    return pending[:cut].split(b"\n\n"), pending[cut + 2 :]


def event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON object of an SSE `data:` event, or None for [DONE], comments and the unparseable."""
    start = event.find(b"data:")
    if start < 0:
        return None
    payload = event[start + 5 :].strip()
    if not payload or payload == b"[DONE]":
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
