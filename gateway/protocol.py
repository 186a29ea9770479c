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
        if "depth" in exc.msg or "recursion" in exc.msg.lower():
            raise TooDeep from exc
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


# orjson encodes at most 254 levels; the completion event holds the request up to 4 deeper.
MAX_JSON_DEPTH = 250
_WRAP = 4


class TooDeep(InvalidRequest):
    """JSON nested past MAX_JSON_DEPTH: neither the upstream call nor the event could carry it."""

    def __init__(self) -> None:
        super().__init__(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")


def encode_forward(body: dict[str, Any]) -> bytes:
    """The body to send upstream, or TooDeep when its event could not be encoded.

    Encoded inside four more levels and sliced back out: orjson's own depth check then
    proves that the event, which nests the request that much deeper, encodes too. The
    bound costs one copy of the payload, rather than a walk of every request in Python.
    """
    try:
        return orjson.dumps([[[[body]]]])[_WRAP:-_WRAP]
    except TypeError as exc:  # orjson.JSONEncodeError: "Recursion limit reached"
        raise TooDeep from exc


def choices_asked(body: dict[str, Any], max_n: int) -> int:
    """How many answers a request generates: the larger of `n` and `best_of` (1 when unset)."""
    asked = 1
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{name} must be a positive integer", param=name)
        if value > max_n:
            raise InvalidRequest(f"{name} is {value}; at most {max_n} are accepted", param=name)
        asked = max(asked, value)
    return asked


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
