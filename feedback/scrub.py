"""Redaction and consent applied to whole events before they leave the process (pure).

One path: `scrub_data` works on the plain dict an event dumps to. The pipeline's worker runs
it through `scrub_json`; `scrub` (tests, offline tools) runs the same code and validates the
result back into a model.

What is redacted is decided by position in the event schema, never by a key's name: the
fields the gateway sets itself (ids it minted, flag, variant, enums, counts, timings) are
listed per event type below; every other field, including any a later schema version adds,
is walked whole (strings, dictionary keys and PII-shaped numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from feedback.redact import Findings, Redactor
from feedback.schema import EVENT_MODELS, AuditEvent, Event, PlainEvent

# Request params that identify a person rather than describe the call.
_PRIVATE_PARAMS = frozenset({"user", "safety_identifier", "prompt_cache_key"})

# Body fields the gateway sets from its own state: never content, never redacted.
_COMPLETION_SET_BY_GATEWAY = frozenset(
    {
        "response_id",
        "flag",
        "flag_version",
        "variant",
        "app",
        "unit_hash",
        "model_served",
        "endpoint",
        "stream",
        "finish_reason",
        "usage",
        "latency_ms",
        "ttft_ms",
        "status",
        "safety",
        "consent",
        "fallback",
        "role",
        "pair_of",
    }
)
_FEEDBACK_SET_BY_GATEWAY = frozenset(
    {
        # response_id and other_response_id are verified signed ids; the rest come from them.
        "response_id",
        "other_response_id",
        "flag",
        "flag_version",
        "variant",
        "app",
        "unit_hash",
        "response_time",
        "kind",
        "winner",
        "source",
        "safety",
        "consent",
    }
)
# Audit: the action and the thing changed (the Kafka key) are the gateway's words.
_AUDIT_SET_BY_GATEWAY = frozenset({"action", "what", "version"})
# An evaluation's only free text is the judge's reason, which may quote the answer.
_EVALUATION_CONTENT = ("reason",)
_ERROR_SET_BY_GATEWAY = frozenset({"type", "code", "status"})


def _merge(into: dict[str, int], found: Findings) -> dict[str, int]:
    merged = dict(into)
    for category, count in found.items():
        merged[category] = merged.get(category, 0) + count
    return merged


def _params(params: dict[str, Any], redactor: Redactor | None, found: Findings) -> dict[str, Any]:
    kept = {key: value for key, value in params.items() if key not in _PRIVATE_PARAMS}
    return redactor.redact_value(kept, found) if redactor else kept


def _rest(
    body: dict[str, Any],
    keep: frozenset[str],
    done: tuple[str, ...],
    redactor: Redactor,
    found: Findings,
) -> None:
    # Every field that is neither set by the gateway nor handled above is content. None is
    # tested first: most of an event's optional fields are empty.
    for key, value in body.items():
        if value is not None and key not in keep and key not in done:
            body[key] = redactor.redact_value(value, found)


def _completion(body: dict[str, Any], redactor: Redactor | None, found: Findings) -> None:
    request, response, error = body.get("request"), body.get("response"), body.get("error")
    if body.get("consent") == "none":
        if request is not None:
            params = _params(request.get("params") or {}, redactor, found)
            body["request"] = {"messages": None, "prompt": None, "params": params}
        body["response"] = None
    else:
        if request is not None:
            for key in ("messages", "prompt"):
                if redactor and request.get(key) is not None:
                    request[key] = redactor.redact_value(request[key], found)
            request["params"] = _params(request.get("params") or {}, redactor, found)
        if response is not None and redactor:
            for key, value in response.items():
                if value:
                    response[key] = redactor.redact_value(value, found)
    if redactor is None:
        return
    if error is not None:
        # Upstream error messages can echo the prompt back.
        for key, value in error.items():
            if key not in _ERROR_SET_BY_GATEWAY and value is not None:
                error[key] = redactor.redact_value(value, found)
    done = ("request", "response", "error")
    _rest(body, _COMPLETION_SET_BY_GATEWAY, done, redactor, found)


def _feedback(body: dict[str, Any], redactor: Redactor | None, found: Findings) -> None:
    if body.get("consent") == "none":
        body["edited_text"] = body["comment"] = None
    if redactor is None:
        return
    value = body.get("value")
    if value is not None and redactor.redact_number(value, found) is not value:
        body["value"] = None  # a number of PII shape where a score belongs: not a score
    _rest(body, _FEEDBACK_SET_BY_GATEWAY, ("value",), redactor, found)


def _audit(body: dict[str, Any], redactor: Redactor | None, found: Findings) -> None:
    # Who made a change, why, and the flags before and after (whose allow lists name units).
    if redactor is not None:
        _rest(body, _AUDIT_SET_BY_GATEWAY, (), redactor, found)


def scrub_data(data: dict[str, Any], redactor: Redactor | None) -> Findings:
    """Redact an event's dict (as its model dumps it) in place; what was found, by category.

    The envelope is the gateway's own (ids, time, instance, validated trace id). Findings are
    added to the body's `safety` map where the event type has one.
    """
    found: Findings = {}
    body = data["body"]
    kind = data.get("type")
    if kind == "completion":
        _completion(body, redactor, found)
    elif kind == "feedback":
        _feedback(body, redactor, found)
    elif kind == "evaluation":
        for key in _EVALUATION_CONTENT:
            if redactor is not None and body.get(key) is not None:
                body[key] = redactor.redact_value(body[key], found)
    else:
        _audit(body, redactor, found)
    if found and "safety" in body:
        body["safety"] = _merge(body["safety"], found)
    return found


def scrub_json(
    event: Event | PlainEvent,
    redactor: Redactor | None,
    seal: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[bytes, Findings]:
    """The event redacted (content dropped under consent "none") as JSON bytes: the worker's path.

    A PlainEvent's dict is redacted in place: it belongs to the pipeline once emitted.
    `seal` then encrypts its content (feedback.privacy), after redaction has seen it.
    """
    data = event.data if isinstance(event, PlainEvent) else event.model_dump()
    found = scrub_data(data, redactor)
    if seal is not None:
        seal(data)
    return orjson.dumps(data, option=orjson.OPT_UTC_Z), found


def scrub(event: Event, redactor: Redactor | None) -> tuple[Event, Findings]:
    """scrub_json's redaction, given back as a validated model (tests and offline tools)."""
    data = event.model_dump()
    found = scrub_data(data, redactor)
    model = EVENT_MODELS.get(data["type"], AuditEvent)
    clean: Event = model.model_validate(data)  # type: ignore[assignment]
    return clean, found
