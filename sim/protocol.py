"""vLLM's OpenAI wire format as the simulator speaks it: request checks, errors, response bodies."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from sim.text import count_tokens

# The vLLM release whose response shapes the simulator follows (docs/vllm-fidelity.md).
VLLM_VERSION = "0.32.0"
FINGERPRINT = f"vllm-{VLLM_VERSION}-5130c0de"

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


def not_found_model(model: str, base: str) -> SimError:
    """A 404 for a model this server does not serve (vLLM lists the base name only)."""
    message = f"The model `{model}` does not exist. Valid aliases: {base}."
    return SimError(404, message, "NotFoundError", "model")


def invalid_field(kind: str, loc: str, msg: str, value: Any, **ctx: str) -> SimError:
    """A 400 as FastAPI's request validation reports it through vLLM's handler."""
    shown = f"<dict of {len(value)} items>" if isinstance(value, dict) else value
    detail: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": shown}
    if ctx:
        detail["ctx"] = ctx
    return SimError(400, f"1 validation error:\n  {detail!r}", "Bad Request", loc)


def bad_value(name: str, message: str, value: Any) -> SimError:
    """A 400 for a field vLLM's sampling checks refuse, with its parameter suffix."""
    return bad_request(f"{message} (parameter={name}, value={value})", name)


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
    # response_format {"type": "json_object"}: answer as a judge, one JSON verdict.
    json_object: bool = False

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over all prompts (completions may carry several)."""
        return sum(tokens for _, tokens in self.prompts)


def new_id(kind: Kind) -> str:
    """A response id as vLLM makes them: chatcmpl-<hex> or cmpl-<hex>."""
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + os.urandom(8).hex()


def _int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = "Input should be a valid integer"
        raise invalid_field("int_type", f"body.{name}", msg, value)
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
        raise invalid_field("missing", "body.messages", "Field required", dict(body))
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise invalid_field("list_type", "body.messages", "Input should be a valid list", "...")
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
    raise invalid_field("string_type", "body.prompt", "Input should be a valid string", "...")


def _stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise invalid_field("string_type", "body.stop", "Input should be a valid string", "...")


def parse_job(kind: Kind, body: Any, models: Iterable[str], max_model_len: int) -> Job:
    """Check a request body as vLLM's OpenAI server does; raise SimError when it would."""
    if not isinstance(body, dict):
        raise invalid_field("model_attributes_type", "body", "Input should be an object", "...")
    served = list(models)
    model = body.get("model")
    if model is None:
        model = served[0]  # vLLM serves the first model name when none is asked for
    elif not isinstance(model, str) or model not in served:
        raise not_found_model(str(model), served[0])
    prompts = [_chat_prompt(body)] if kind == "chat" else _completion_prompts(body)
    n = _int(body, "n")
    n = 1 if n is None else n
    if n < 1:
        raise bad_value("n", f"n must be at least 1, got {n}.", n)
    max_tokens = _int(body, "max_completion_tokens") if kind == "chat" else None
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens")
    if max_tokens is not None and max_tokens < 1:
        raise bad_value(
            "max_tokens", f"max_tokens must be at least 1, got {max_tokens}.", max_tokens
        )
    if max_tokens is not None and max_tokens > max_model_len:
        message = (
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens."
        )
        raise bad_value("max_tokens", message, max_tokens)
    for topic, tokens in prompts:
        # vLLM first bounds the prompt by characters (17 per token), then by tokens.
        chars = len(topic)
        if chars > 17 * max_model_len:
            message = (
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your prompt contains {chars} characters (more than {17 * max_model_len} "
                f"characters, which is the upper bound for {max_model_len} input tokens). "
                "Please reduce the length of the input prompt."
            )
            raise bad_value("input_text", message, chars)
        if tokens >= max_model_len:
            message = (
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your request has {tokens} input tokens. Please reduce the length of the "
                "input prompt."
            )
            raise bad_value("input_tokens", message, tokens)
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        msg = "Input should be a valid number, unable to parse string as a number"
        raise invalid_field("float_parsing", "body.temperature", msg, temperature)
    if isinstance(temperature, int | float) and temperature < 0:
        message = f"temperature must be non-negative, got {temperature}."
        raise bad_value("temperature", message, temperature)
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
        json_object=_json_object(body),
    )


def _json_object(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") == "json_object"


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
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                    "token_ids": None,
                    "routed_experts": None,
                }
                for index, (text, finish, stop_reason) in enumerate(choices)
            ],
            "service_tier": None,
            "system_fingerprint": FINGERPRINT,
            "usage": {**used, "prompt_tokens_details": None, "completion_tokens_details": None},
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
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
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
                for index, (text, finish, stop_reason) in enumerate(choices)
            ],
            "service_tier": None,
            "system_fingerprint": FINGERPRINT,
            "usage": {**used, "prompt_tokens_details": None, "completion_tokens_details": None},
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


class ChunkMaker:
    """SSE events of one stream, shaped as vLLM's stream generators write them."""

    def __init__(self, kind: Kind, rid: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self.include_usage = include_usage
        self.head = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        # Mid-stream token chunks are the hot path: pre-serialised around the token text.
        head = orjson.dumps({**self.head, "choices": []})[:-3]
        self._open = b"data: " + head + b'[{"index":'
        if kind == "chat":
            self._field = b',"delta":{"content":'
            self._close = b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
        else:
            self._field = b',"text":'
            self._close = (
                b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                b'"prompt_token_ids":null,"token_ids":null}]}\n\n'
            )

    def _event(self, event: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def role(self, index: int) -> bytes:
        """The first chat chunk of a choice: the assistant role and empty content."""
        delta = {"role": "assistant", "content": ""}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._event(
            {**self.head, "choices": [choice], "prompt_token_ids": None, "prompt_text": None}
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
            choice.update(finish_reason=finish, stop_reason=stop_reason, token_ids=None)
        else:
            choice = {"index": index, "text": piece, "logprobs": None, "finish_reason": finish}
            choice.update(stop_reason=stop_reason, prompt_token_ids=None, token_ids=None)
        event: dict[str, Any] = {**self.head, "choices": [choice]}
        if not self.include_usage:
            # The fingerprint rides on the usage chunk when there is one, else here.
            event["system_fingerprint"] = FINGERPRINT
        return self._event(event)

    def usage(self, used: dict[str, int]) -> bytes:
        """The final chunk with no choices and the stream's usage."""
        return self._event(
            {**self.head, "choices": [], "usage": used, "system_fingerprint": FINGERPRINT}
        )


DONE = b"data: [DONE]\n\n"
