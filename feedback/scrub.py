"""Redaction and consent applied to whole events before they leave the process (pure)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from feedback.redact import Findings, Redactor
from feedback.schema import (
    AuditEvent,
    CompletionBody,
    CompletionEvent,
    Event,
    FeedbackBody,
    FeedbackEvent,
    PlainEvent,
    RequestContent,
    ResponseContent,
)

# Request params that identify a person rather than describe the call.
_PRIVATE_PARAMS = frozenset({"user", "safety_identifier", "prompt_cache_key"})


def _merge(into: dict[str, int], found: Findings) -> dict[str, int]:
    if not found:
        return into
    merged = dict(into)
    for category, count in found.items():
        merged[category] = merged.get(category, 0) + count
    return merged


def _params(params: dict[str, Any], redactor: Redactor | None, found: Findings) -> dict[str, Any]:
    kept = {key: value for key, value in params.items() if key not in _PRIVATE_PARAMS}
    return redactor.redact_value(kept, found) if redactor else kept


def _completion(body: CompletionBody, redactor: Redactor | None) -> tuple[CompletionBody, Findings]:
    found: Findings = {}
    request, response, error = body.request, body.response, body.error
    if body.consent == "none":
        # Metadata only: the sampling parameters stay, every piece of content goes.
        request = (
            RequestContent(params=_params(request.params, redactor, found)) if request else None
        )
        response = None
    else:
        if request is not None:
            request = RequestContent(
                messages=redactor.redact_value(request.messages, found)
                if redactor and request.messages is not None
                else request.messages,
                prompt=redactor.redact_value(request.prompt, found)
                if redactor and request.prompt is not None
                else request.prompt,
                params=_params(request.params, redactor, found),
            )
        if response is not None and redactor:
            response = ResponseContent(
                text=redactor.redact_into(response.text, found) if response.text else response.text,
                tool_calls=redactor.redact_value(response.tool_calls, found)
                if response.tool_calls
                else response.tool_calls,
            )
    if error is not None and redactor:
        # Upstream error messages can echo the prompt back.
        error = error.model_copy(update={"message": redactor.redact_into(error.message, found)})
    safety = _merge(body.safety, found)
    update = {"request": request, "response": response, "error": error, "safety": safety}
    return body.model_copy(update=update), found


def _feedback(body: FeedbackBody, redactor: Redactor | None) -> tuple[FeedbackBody, Findings]:
    found: Findings = {}
    edited, comment = body.edited_text, body.comment
    if body.consent == "none":
        edited = comment = None
    elif redactor:
        edited = redactor.redact_into(edited, found) if edited else edited
        comment = redactor.redact_into(comment, found) if comment else comment
    metadata = redactor.redact_value(body.metadata, found) if redactor else body.metadata
    update = {
        "edited_text": edited,
        "comment": comment,
        "metadata": metadata,
        "safety": _merge(body.safety, found),
    }
    return body.model_copy(update=update), found


def scrub(event: Event, redactor: Redactor | None) -> tuple[Event, Findings]:
    """The event with content redacted (dropped under consent "none"), and what was found."""
    if isinstance(event, CompletionEvent):
        completion, found = _completion(event.body, redactor)
        return event.model_copy(update={"body": completion}), found
    if isinstance(event, FeedbackEvent):
        feedback, found = _feedback(event.body, redactor)
        return event.model_copy(update={"body": feedback}), found
    assert isinstance(event, AuditEvent)
    return event, {}


def _completion_dict(body: dict[str, Any], redactor: Redactor | None, found: Findings) -> None:
    request, response, error = body["request"], body["response"], body["error"]
    if body["consent"] == "none":
        if request is not None:
            params = _params(request["params"], redactor, found)
            body["request"] = {"messages": None, "prompt": None, "params": params}
        body["response"] = None
    else:
        if request is not None:
            for key in ("messages", "prompt"):
                if redactor and request[key] is not None:
                    request[key] = redactor.redact_value(request[key], found)
            request["params"] = _params(request["params"], redactor, found)
        if response is not None and redactor:
            if response["text"]:
                response["text"] = redactor.redact_into(response["text"], found)
            if response["tool_calls"]:
                response["tool_calls"] = redactor.redact_value(response["tool_calls"], found)
    if error is not None and redactor:
        error["message"] = redactor.redact_into(error["message"], found)


def _feedback_dict(body: dict[str, Any], redactor: Redactor | None, found: Findings) -> None:
    if body["consent"] == "none":
        body["edited_text"] = body["comment"] = None
    elif redactor:
        for key in ("edited_text", "comment"):
            if body[key]:
                body[key] = redactor.redact_into(body[key], found)
    if redactor:
        body["metadata"] = redactor.redact_value(body["metadata"], found)


def scrub_json(
    event: Event | PlainEvent,
    redactor: Redactor | None,
    seal: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[bytes, Findings]:
    """What to_json(scrub(event)[0]) gives, without rebuilding models: the worker's fast path.

    A PlainEvent's dict is redacted in place: it belongs to the pipeline once emitted.
    `seal` then encrypts its content (feedback.privacy), after redaction has seen it.
    """
    data = event.data if isinstance(event, PlainEvent) else event.model_dump()
    found: Findings = {}
    if event.type == "completion":
        _completion_dict(data["body"], redactor, found)
    elif event.type == "feedback":
        _feedback_dict(data["body"], redactor, found)
    if found:
        data["body"]["safety"] = _merge(data["body"]["safety"], found)
    if seal is not None:
        seal(data)
    return orjson.dumps(data, option=orjson.OPT_UTC_Z), found
