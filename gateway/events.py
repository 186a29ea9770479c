"""From what happened in a request (Exchange) to the completion event that records it, and
from an accepted judgement to its feedback event.

Built after the answer has been sent, as the plain dict the event model dumps to: the gateway
made every value, so validating it would only cost time on the request path (tests check
these dicts against the models and the shipped JSON Schemas). Redaction and serialisation
happen in the pipeline's worker.
"""

from __future__ import annotations

from typing import Any

from feedback.schema import (
    COMPLETIONS_TOPIC,
    FEEDBACK_TOPIC,
    AuditBody,
    AuditEvent,
    PlainEvent,
    envelope_fields,
)
from gateway.exchange import Exchange
from router.stores.base import AuditRecord

_CONTENT_KEYS = ("messages", "prompt")


def completion_event(
    ex: Exchange, *, instance: str, unit_hash: str, safety: dict[str, int] | None = None
) -> PlainEvent:
    """The `completion` event for one finished (or failed, or cancelled) answer."""
    body = ex.request
    params = {k: v for k, v in body.items() if k not in _CONTENT_KEYS}
    has_answer = bool(ex.text_parts or ex.tool_calls)
    has_usage = bool(ex.prompt_tokens or ex.completion_tokens)
    response_id = ex.response_id or ex.request_id
    data = envelope_fields(ex.started_at, instance, ex.trace_id or None, "completion")
    data["body"] = {
        "response_id": response_id,
        "flag": ex.flag or None,
        "flag_version": ex.flag_version,
        "variant": ex.variant or None,
        "app": ex.app_id,
        "unit_hash": unit_hash,
        "model_requested": ex.model,
        "model_served": ex.served_model or None,
        "endpoint": "chat" if ex.kind == "chat" else "completions",
        "stream": ex.stream,
        "request": {
            "messages": body.get("messages"),
            "prompt": body.get("prompt"),
            "params": params,
        },
        "response": {"text": ex.text, "tool_calls": ex.tool_calls or None} if has_answer else None,
        "finish_reason": ex.finish_reason,
        "usage": {
            "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": ex.completion_tokens,
            "total_tokens": ex.prompt_tokens + ex.completion_tokens,
        }
        if has_usage
        else None,
        "latency_ms": ex.latency_s * 1000,
        "ttft_ms": ex.ttft_s * 1000 if ex.ttft_s is not None else None,
        "status": ex.status,
        "error": {
            "type": "upstream_error" if ex.http_status >= 500 else "invalid_request_error",
            "message": ex.error or "",
            "code": None,
            "status": ex.http_status,
        }
        if ex.status == "error"
        else None,
        "safety": dict(safety) if safety else {},  # safety check findings; redaction adds its own
        "consent": "none" if ex.consent == "none" else "full",
        "fallback": ex.fallback,
        "role": ex.role,
        "pair_of": ex.pair_of or None,
        "shadowed": ex.shadowed,
        "sealed": None,  # the pipeline seals content per unit (feedback.privacy)
    }
    return PlainEvent("completion", COMPLETIONS_TOPIC, response_id, data)


def feedback_event(
    body: dict[str, Any], *, instance: str, now: float, trace_id: str | None
) -> PlainEvent:
    """The `feedback` event for a judgement whose body is FeedbackBody's dump (all its fields,
    in its order): what FeedbackEvent.create(...).model_dump() gives, without the models."""
    data = envelope_fields(now, instance, trace_id, "feedback")
    data["body"] = body
    return PlainEvent("feedback", FEEDBACK_TOPIC, body["response_id"], data)


def audit_event(record: AuditRecord, *, instance: str) -> AuditEvent:
    """The `flag_change` event for a change the flag store made."""
    body = AuditBody(
        who=record.who,
        action=record.action,
        what=record.flag_key,
        version=record.after.version if record.after else None,
        before=record.before.model_dump(mode="json") if record.before else None,
        after=record.after.model_dump(mode="json") if record.after else None,
        reason=record.reason,
    )
    return AuditEvent.create(body, gateway=instance, now=record.time.timestamp())
