"""vLLM's OpenAI wire format as the simulator speaks it: request checks, errors, response bodies."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from sim.text import count_tokens

# The vLLM release whose response shapes the simulator follows.
VLLM_VERSION = "0.10.1.1"

# Chat templates wrap each message in a few special tokens, and add a generation prompt.
_TOKENS_PER_MESSAGE = 4
_GENERATION_PROMPT_TOKENS = 3

Kind = Literal["chat", "completion"]


class SimError(Exception):
    """An error answer in vLLM's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param

    def body(self) -> bytes:
        """The JSON body; vLLM puts the HTTP status in `code`."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return orjson.dumps({"error": {**error, "code": self.status}})


def bad_request(message: str, param: str | None = None) -> SimError:
    """A 400 as vLLM reports invalid requests."""
    return SimError(400, message, "BadRequestError", param)


def not_found_model(model: str) -> SimError:
    """A 404 for a model this server does not serve."""
    return SimError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")


def server_error(message: str) -> SimError:
    """A 500 as vLLM reports an engine failure."""
    return SimError(500, message, "InternalServerError")


@dataclass(slots=True)
class Job:
    """A checked generation request: what to answer, how much, and how to send it."""

    kind: Kind
    model: str
    prompts: list[tuple[str, int]]  # (topic text, prompt tokens) per prompt
    n: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    seed: int | None
    stop: list[str] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over all prompts (completions may carry several)."""
        return sum(tokens for _, tokens in self.prompts)


def new_id(kind: Kind) -> str:
    """A response id as vLLM makes them: chatcmpl-<hex> or cmpl-<hex>."""
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + os.urandom(16).hex()


def _int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name}: Input should be a valid integer", name)
    return value


def _content_text(content: Any) -> str:
    """Text of a message's content: a string or a list of parts (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def _chat_prompt(body: Mapping[str, Any]) -> tuple[str, int]:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages: Field required", "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise bad_request("messages: Input should be a valid list of messages", "messages")
    texts = [_content_text(m.get("content")) for m in messages]
    tokens = sum(count_tokens(text) + _TOKENS_PER_MESSAGE for text in texts)
    tokens += _GENERATION_PROMPT_TOKENS
    users = [text for m, text in zip(messages, texts, strict=True) if m.get("role") == "user"]
    topic = users[-1] if users else (texts[-1] if texts else "")
    return topic, tokens


def _completion_prompts(body: Mapping[str, Any]) -> list[tuple[str, int]]:
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.")
    if isinstance(prompt, str):
        return [(prompt, max(1, count_tokens(prompt)))]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return [(p, max(1, count_tokens(p))) for p in prompt]
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return [("", len(prompt))]
    if isinstance(prompt, list) and all(
        isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt
    ):
        return [("", len(p)) for p in prompt]
    raise bad_request("prompt: Input should be a string, a list of strings or token ids", "prompt")


def _stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise bad_request("stop: Input should be a string or a list of strings", "stop")


def parse_job(kind: Kind, body: Any, models: Iterable[str], max_model_len: int) -> Job:
    """Check a request body as vLLM's OpenAI server does; raise SimError when it would."""
    if not isinstance(body, dict):
        raise bad_request("Expected a JSON object as the request body")
    served = list(models)
    model = body.get("model")
    if model is None:
        model = served[0]  # vLLM serves the first model name when none is asked for
    elif not isinstance(model, str) or model not in served:
        raise not_found_model(str(model))
    prompts = [_chat_prompt(body)] if kind == "chat" else _completion_prompts(body)
    n = _int(body, "n")
    n = 1 if n is None else n
    if n < 1:
        raise bad_request(f"n must be at least 1, got {n}.", "n")
    max_tokens = _int(body, "max_completion_tokens") if kind == "chat" else None
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens")
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    for _, tokens in prompts:
        if tokens >= max_model_len:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your request has {tokens} input tokens. Please reduce the length of the "
                "input messages.",
                "messages" if kind == "chat" else "prompt",
            )
        if max_tokens is not None and tokens + max_tokens > max_model_len:
            raise bad_request(
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This "
                f"model's maximum context length is {max_model_len} tokens and your request "
                f"has {tokens} input tokens ({max_tokens} > {max_model_len} - {tokens}).",
                "max_tokens",
            )
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and temperature < 0:
        raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad_request("Stream options can only be defined when `stream=True`.")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return Job(
        kind=kind,
        model=model,
        prompts=prompts,
        n=n,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        seed=_int(body, "seed"),
        stop=_stop(body),
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage object, in vLLM's field order."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def chat_body(
    rid: str, model: str, created: int, choices: list[tuple[str, str, str | None]], used: Any
) -> bytes:
    """A non-streaming chat.completion; choices are (text, finish_reason, stop_reason)."""
    return orjson.dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                }
                for index, (text, finish, stop_reason) in enumerate(choices)
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {**used, "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
    )


def completion_body(
    rid: str, model: str, created: int, choices: list[tuple[str, str, str | None]], used: Any
) -> bytes:
    """A non-streaming text_completion; choices are (text, finish_reason, stop_reason)."""
    return orjson.dumps(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                    "prompt_logprobs": None,
                }
                for index, (text, finish, stop_reason) in enumerate(choices)
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {**used, "prompt_tokens_details": None},
            "kv_transfer_params": None,
        }
    )


class ChunkMaker:
    """SSE events of one stream, shaped as vLLM's stream generators write them."""

    def __init__(self, kind: Kind, rid: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self.head = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        # vLLM sets usage to null on every chunk when the final usage chunk is asked for.
        self.tail: dict[str, Any] = {"usage": None} if include_usage else {}
        # Mid-stream token chunks are the hot path: pre-serialised around the token text.
        head = orjson.dumps({**self.head, "choices": []})[:-3]
        self._open = b"data: " + head + b'[{"index":'
        field = b',"delta":{"content":' if kind == "chat" else b',"text":'
        self._field = field
        close = b'},"logprobs":null' if kind == "chat" else b',"logprobs":null'
        close += b',"finish_reason":null'
        if kind == "completion":
            close += b',"stop_reason":null'
        self._close = close + b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"

    def _event(self, choice: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self.head, "choices": [choice], **self.tail}) + b"\n\n"

    def role(self, index: int) -> bytes:
        """The first chat chunk of a choice: the assistant role and empty content."""
        delta = {"role": "assistant", "content": ""}
        return self._event(
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        )

    def token(
        self, index: int, piece: str, finish: str | None = None, stop_reason: str | None = None
    ) -> bytes:
        """One token of a choice; the last one carries the finish reason."""
        if finish is None:
            text = orjson.dumps(piece)
            return b"".join((self._open, str(index).encode(), self._field, text, self._close))
        choice: dict[str, Any]
        if self.kind == "chat":
            choice = {"index": index, "delta": {"content": piece}, "logprobs": None}
            choice["finish_reason"] = finish
            if finish is not None:
                choice["stop_reason"] = stop_reason
        else:
            choice = {"index": index, "text": piece, "logprobs": None, "finish_reason": finish}
            choice["stop_reason"] = stop_reason
        return self._event(choice)

    def usage(self, used: dict[str, int]) -> bytes:
        """The final chunk with no choices and the stream's usage."""
        return b"data: " + orjson.dumps({**self.head, "choices": [], "usage": used}) + b"\n\n"


DONE = b"data: [DONE]\n\n"
