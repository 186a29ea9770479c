"""From what happened in a request (Exchange) to the completion event that records it.

Built after the answer has been sent, without validation (the gateway made every value);
redaction and serialisation happen in the pipeline's worker, off the request path.
"""

from __future__ import annotations

from typing import Any

from feedback.schema import (
    AuditBody,
    AuditEvent,
    CompletionBody,
    CompletionEvent,
    ErrorInfo,
    RequestContent,
    ResponseContent,
    Usage,
)
from gateway.exchange import Exchange
from router.stores.base import AuditRecord

_CONTENT_KEYS = ("messages", "prompt")


def completion_event(
    ex: Exchange, *, instance: str, unit_hash: str, safety: dict[str, int] | None = None
) -> CompletionEvent:
    """The `completion` event for one finished (or failed, or cancelled) answer."""
    body = ex.request
    params = {k: v for k, v in body.items() if k not in _CONTENT_KEYS}
    request = RequestContent.model_construct(
        messages=body.get("messages"), prompt=body.get("prompt"), params=params
    )
    response = (
        ResponseContent.model_construct(text=ex.text, tool_calls=ex.tool_calls or None)
        if ex.text_parts or ex.tool_calls
        else None
    )
    usage = (
        Usage.model_construct(
            prompt_tokens=ex.prompt_tokens,
            completion_tokens=ex.completion_tokens,
            total_tokens=ex.prompt_tokens + ex.completion_tokens,
        )
        if ex.prompt_tokens or ex.completion_tokens
        else None
    )
    error = (
        ErrorInfo.model_construct(
            type="upstream_error" if ex.http_status >= 500 else "invalid_request_error",
            message=ex.error or "",
            code=None,
            status=ex.http_status,
        )
        if ex.status == "error"
        else None
    )
    fields: dict[str, Any] = {
        "response_id": ex.response_id or ex.request_id,
        "flag": ex.flag or None,
        "flag_version": ex.flag_version,
        "variant": ex.variant or None,
        "app": ex.app_id,
        "unit_hash": unit_hash,
        "model_requested": ex.model,
        "model_served": ex.served_model or None,
        "endpoint": "chat" if ex.kind == "chat" else "completions",
        "stream": ex.stream,
        "request": request,
        "response": response,
        "finish_reason": ex.finish_reason,
        "usage": usage,
        "latency_ms": ex.latency_s * 1000,
        "ttft_ms": ex.ttft_s * 1000 if ex.ttft_s is not None else None,
        "status": ex.status,
        "error": error,
        "safety": safety or {},  # safety check findings; redaction adds its own
        "consent": "none" if ex.consent == "none" else "full",
        "fallback": ex.fallback,
    }
    return CompletionEvent.create(
        CompletionBody.model_construct(**fields),
        gateway=instance,
        now=ex.started_at,
        trace_id=ex.trace_id or None,
    )


def audit_event(record: AuditRecord, *, instance: str) -> AuditEvent:
    """The `flag_change` event for a change the flag store made."""
    body = AuditBody(
        who=record.who,
        action=record.action,
        what=record.flag_key,
        version=record.after.version if record.after else None,
        before=record.before.model_dump(mode="json") if record.before else None,
        after=record.after.model_dump(mode="json") if record.after else None,
    )
    return AuditEvent.create(body, gateway=instance, now=record.time.timestamp())
