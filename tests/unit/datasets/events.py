"""Synthetic completion and feedback events for the dataset tests, built with the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from feedback.schema import (
    CompletionBody,
    CompletionEvent,
    FeedbackBody,
    FeedbackEvent,
    RequestContent,
    ResponseContent,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp()
SYSTEM = {"role": "system", "content": "You are a helpful support bot."}


def messages(prompt: str) -> list[dict[str, Any]]:
    """The request messages for one user question (content as text parts, as SDKs send)."""
    return [SYSTEM, {"role": "user", "content": [{"type": "text", "text": prompt}]}]


def completion(
    rid: str,
    *,
    unit: str = "u1",
    prompt: str = "How do I reset my password?",
    text: str = "Click 'forgot password'.",
    variant: str = "control",
    flag: str = "support-bot",
    app: str = "app-1",
    at: float = 0.0,
    **changes: Any,
) -> CompletionEvent:
    """A completion at T0 + `at` seconds."""
    fields: dict[str, Any] = {
        "response_id": rid,
        "flag": flag,
        "flag_version": 1,
        "variant": variant,
        "app": app,
        "unit_hash": unit,
        "model_requested": flag,
        "model_served": f"policy-{variant}",
        "request": RequestContent(messages=messages(prompt), params={"temperature": 0.7}),
        "response": ResponseContent(text=text),
        "finish_reason": "stop",
        "latency_ms": 100.0,
    }
    fields.update(changes)
    return CompletionEvent.create(CompletionBody(**fields), gateway="gw-1", now=T0 + at)


def feedback(rid: str, kind: str, *, at: float = 10.0, **changes: Any) -> FeedbackEvent:
    """Feedback of `kind` on `rid` at T0 + `at` seconds."""
    fields: dict[str, Any] = {"response_id": rid, "app": "app-1", "kind": kind}
    fields.update(changes)
    return FeedbackEvent.create(FeedbackBody(**fields), gateway="gw-1", now=T0 + at)
