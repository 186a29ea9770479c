"""Kafka record headers for an event, so consumers can route and trace without the body (pure)."""

from __future__ import annotations

import re
from typing import Any

import orjson

CONTENT_TYPE = b"application/json"
TYPE_HEADER = "loopgate-event-type"
VERSION_HEADER = "loopgate-schema-version"
EVENT_ID_HEADER = "loopgate-event-id"
TRUNCATED_HEADER = "loopgate-truncated"

Headers = list[tuple[str, bytes]]

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_NO_SPAN = "0" * 16
# Every envelope field comes before the body, in the models' order. Inside a JSON string a
# quote is always escaped, so the first `,"body":` is the top-level key.
_BODY_KEY = b',"body":'


def _envelope(value: bytes) -> dict[str, Any]:
    """The envelope fields, parsing only what comes before the body when it can."""
    cut = value.find(_BODY_KEY)
    try:
        data = orjson.loads(value[:cut] + b"}") if cut > 0 else orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
    return data if isinstance(data, dict) else {}


def traceparent(trace_id: object, event_id: object) -> bytes | None:
    """A W3C traceparent in the event's trace, or None when the event has no valid trace id.

    The event records no span of its own, so the parent id is derived from the event id
    (its last 16 hex digits, random in a UUIDv7): stable for the event, and consumers' spans
    join the request's trace. Sampled, so a consumer's parent-based sampler records them.
    """
    if not isinstance(trace_id, str) or not _TRACE_ID.fullmatch(trace_id):
        return None
    if trace_id == "0" * 32:
        return None
    span = str(event_id)[-17:].replace("-", "").lower()  # a UUID's last 4 + 12 hex digits
    if not _SPAN_ID.fullmatch(span) or span == _NO_SPAN:
        span = "0000000000000001"
    return f"00-{trace_id}-{span}-01".encode()


def record_headers(value: bytes) -> Headers:
    """content-type, event type, schema version, event id and (with a trace) traceparent."""
    envelope = _envelope(value)
    headers: Headers = [("content-type", CONTENT_TYPE)]
    kind = envelope.get("type")
    if isinstance(kind, str):
        headers.append((TYPE_HEADER, kind.encode()))
    version = envelope.get("schema_version")
    if isinstance(version, int):
        headers.append((VERSION_HEADER, str(version).encode()))
    event_id = envelope.get("event_id")
    if isinstance(event_id, str):
        headers.append((EVENT_ID_HEADER, event_id.encode()))
    parent = traceparent(envelope.get("trace_id"), event_id)
    if parent is not None:
        headers.append(("traceparent", parent))
    return headers
