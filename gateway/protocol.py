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


def parse_inbound(raw: bytes, kind: Kind, max_depth: int = 100) -> Inbound:
    """Read model, stream, user (and check messages/prompt exist); nothing else is touched."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "recursion" in exc.msg.lower():
            raise TooDeep(max_depth) from exc
        raise InvalidJSON(f"request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    # Every level opens a bracket, so a body with few brackets is shallow: only bodies with
    # many (long conversations, tool schemas) pay for the walk.
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(body, max_depth) > max_depth:
        raise TooDeep(max_depth)
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


class TooDeep(InvalidRequest):
    """JSON nested past the limit (the encoder and the event writer could not take it)."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"request body is nested more than {max_depth} levels deep")


def json_depth(doc: Any, stop: int) -> int:
    """Levels of arrays and objects in `doc`, counted up to `stop` + 1 (iterative: no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > stop:
                return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


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
