"""OpenAI wire format: the few request fields the gateway reads; everything else passes through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from gateway.errors import InvalidJSON, InvalidRequest

Kind = Literal["chat", "completion"]


@dataclass(slots=True)
class Inbound:
    """A parsed request body; `body` is forwarded after `model` is rewritten."""

    kind: Kind
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    user: str | None


def parse_inbound(raw: bytes, kind: Kind) -> Inbound:
    """Read model, stream, user (and check messages/prompt exist); nothing else is touched."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty array", param="messages")
    elif "prompt" not in body:
        raise InvalidRequest("you must provide a prompt parameter", param="prompt")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequest("stream must be a boolean", param="stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("stream_options must be an object", param="stream_options")
        include_usage = options.get("include_usage") is True
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("user must be a string", param="user")
    return Inbound(kind, body, model, bool(stream), include_usage, user)


class ChatCompletionRequest(BaseModel):
    """Documents the chat route in OpenAPI; the handler itself reads raw JSON."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, Any]]
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


class CompletionRequest(BaseModel):
    """Documents the legacy completions route in OpenAPI."""

    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | list[str]
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    max_tokens: int | None = None
