"""Sample events for the feedback tests."""

from __future__ import annotations

from typing import Any

from feedback.schema import (
    AuditBody,
    AuditEvent,
    CompletionBody,
    CompletionEvent,
    ErrorInfo,
    EvaluationBody,
    EvaluationEvent,
    FeedbackBody,
    FeedbackEvent,
    RequestContent,
    ResponseContent,
    Usage,
)

NOW = 1_700_000_000.25


def completion(
    response_id: str = "lg1.p.m", text: str = "hello", **changes: Any
) -> CompletionEvent:
    """A completion event with chat content."""
    fields: dict[str, Any] = {
        "response_id": response_id,
        "flag": "support-bot",
        "flag_version": 3,
        "variant": "canary",
        "app": "app-1",
        "unit_hash": "0" * 32,
        "model_requested": "support-bot",
        "model_served": "policy-b",
        "stream": True,
        "request": RequestContent(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": text}]},
            ],
            params={"temperature": 0.2, "user": "alice@example.com"},
        ),
        "response": ResponseContent(text=f"answer to {text}", tool_calls=None),
        "finish_reason": "stop",
        "usage": Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12),
        "latency_ms": 123.4,
        "ttft_ms": 45.0,
    }
    fields.update(changes)
    return CompletionEvent.create(CompletionBody(**fields), gateway="gw-1", now=NOW, trace_id="t1")


def feedback(response_id: str = "lg1.p.m", kind: str = "edit", **changes: Any) -> FeedbackEvent:
    """A feedback event."""
    fields: dict[str, Any] = {
        "response_id": response_id,
        "flag": "support-bot",
        "flag_version": 3,
        "variant": "canary",
        "app": "app-1",
        "kind": kind,
        "edited_text": "better answer",
        "comment": "close",
        "metadata": {"screen": "chat", "n": 2},
        "idempotency_key": "idem-1",
    }
    fields.update(changes)
    return FeedbackEvent.create(FeedbackBody(**fields), gateway="gw-1", now=NOW)


def audit() -> AuditEvent:
    """A flag change."""
    body = AuditBody(
        who="ops@example.com",
        action="set_weights",
        what="support-bot",
        version=4,
        before={"canary": 0.1},
        after={"canary": 0.5},
    )
    return AuditEvent.create(body, gateway="gw-1", now=NOW)


def failed_completion() -> CompletionEvent:
    """An errored completion without content."""
    return completion(
        status="error",
        response=None,
        error=ErrorInfo(type="upstream_error", message="boom", status=502),
    )


def evaluation(response_id: str = "lg1.p.m", **changes: Any) -> EvaluationEvent:
    """A judge's score of an answer."""
    fields: dict[str, Any] = {
        "response_id": response_id,
        "flag": "support-bot",
        "flag_version": 3,
        "variant": "canary",
        "app": "app-1",
        "evaluator": "helpfulness",
        "evaluator_kind": "judge",
        "version": "judge-model@3f2a9c01",
        "score": 4.0,
        "reason": "answers the question",
        "latency_ms": 812.5,
    }
    fields.update(changes)
    return EvaluationEvent.create(EvaluationBody(**fields), gateway="gw-1", now=NOW)
