"""SSE relay: events forwarded as they come, the signed id swapped in, errors in-band."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.asgi import Send
from gateway.errors import BadGateway, GatewayError, UpstreamTimeout
from gateway.exchange import Exchange
from gateway.httpclient import ClientError
from gateway.resolver import Route
from gateway.runtime import Runtime
from gateway.upstream import UpstreamCall

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def relay_stream(
    rt: Runtime,
    send: Send,
    call: UpstreamCall,
    route: Route,
    ex: Exchange,
    started: float,
    strip_usage: bool,
    headers: list[tuple[bytes, bytes]],
    itl: Any,
) -> None:
    """Forward upstream SSE events as they arrive, swapping in the signed id; errors in-band.

    Events are forwarded whole (never split, never held back for more); a usage chunk the
    client did not ask for is dropped; once the stream has started, an upstream failure
    becomes an error event the SDK raises, and the stream ends.
    """
    headers.extend(_SSE_HEADERS)
    ex.responded = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    pending = b""
    swap: tuple[bytes, bytes] | None = None
    last_content: float | None = None
    try:
        async for data in call.response.iter_any():
            pending += data
            cut = pending.rfind(b"\n\n")
            if cut < 0:
                continue
            events = pending[:cut].split(b"\n\n")
            pending = pending[cut + 2 :]
            out: list[bytes] = []
            for event in events:
                doc = event_json(event)
                if doc is not None:
                    if swap is None and "id" in doc:
                        ex.upstream_id = str(doc["id"])
                        ex.response_id = rt.response_id(ex)
                        swap = (
                            orjson.dumps(ex.upstream_id),
                            orjson.dumps(ex.response_id),
                        )
                    if ex.take_chunk(doc):
                        now = time.perf_counter()
                        if last_content is None:
                            ex.ttft_s = now - started
                            call.first_token()
                        else:
                            itl.observe(now - last_content)
                        last_content = now
                    if strip_usage and not doc.get("choices") and doc.get("usage"):
                        continue
                out.append(event)
            if not out:
                continue
            chunk = b"\n\n".join(out) + b"\n\n"
            if swap is not None:
                chunk = chunk.replace(swap[0], swap[1])
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if pending.strip():
            await send({"type": "http.response.body", "body": pending, "more_body": True})
        call.release()
    except (ClientError, TimeoutError) as exc:
        call.fail()
        kind = "timeout" if isinstance(exc, TimeoutError) else "midstream"
        rt.upstreams.metrics.errors.labels(route.pool.name, kind).inc()
        err: GatewayError = (
            UpstreamTimeout(f"upstream {route.pool.name} stalled mid-stream")
            if isinstance(exc, TimeoutError)
            else BadGateway(f"upstream {route.pool.name} broke off the stream")
        )
        ex.status, ex.http_status, ex.error = "error", err.status, err.message
        # SSE has started: the error goes in-band and the stream ends (the SDK raises it).
        await send({"type": "http.response.body", "body": b"data: " + err.body() + b"\n\n"})
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


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
