"""What happened in one request: the record that metrics and the completion event are made from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A stream's text is kept as parts, joined into one every this many (a str per token costs
# ~60 bytes for a few characters of text).
_JOIN_PARTS = 32


@dataclass(slots=True)
class Exchange:
    """Filled in as the request goes; handed to the event pipeline when it ends."""

    request_id: str
    kind: str
    started_at: float
    model: str = ""
    flag: str = ""
    variant: str = ""
    flag_version: int = 0
    reason: str = ""
    served_model: str = ""
    endpoint: str = ""
    app_id: str = ""
    unit_id: str = ""
    unit_hash: str = ""
    consent: str = "full"
    stream: bool = False
    request: dict[str, Any] = field(default_factory=dict)
    response_id: str = ""
    upstream_id: str = ""
    text_parts: list[str] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = "ok"
    http_status: int = 200
    error: str | None = None
    latency_s: float = 0.0
    ttft_s: float | None = None
    overhead_s: float | None = None  # the gateway's own time, as X-Loopgate-Overhead-Ms says
    trace_id: str = ""
    fallback: bool = False
    # Shadow traffic: "shadow" for the mirrored call, whose pair_of is the primary's response id;
    # a primary that was mirrored is `shadowed`.
    role: str = "primary"
    pair_of: str = ""
    shadowed: bool = False
    # Response headers the request path adds (rate limits); None: none.
    headers_out: list[tuple[bytes, bytes]] | None = None
    responded: bool = False

    @property
    def text(self) -> str:
        """The answer as the client received it."""
        return "".join(self.text_parts)

    def take_usage(self, usage: Any) -> None:
        """Token counts from an answer's or a chunk's `usage`."""
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def take_answer(self, doc: dict[str, Any]) -> None:
        """Text, tool calls, finish reason and usage from a whole answer."""
        self.take_usage(doc.get("usage"))
        choices = doc.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason")
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                self.text_parts.append(content)
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                self.tool_calls.extend(calls)
        elif isinstance(choice.get("text"), str):
            self.text_parts.append(choice["text"])

    def take_chunk(self, doc: dict[str, Any]) -> bool:
        """What a stream chunk adds; True when it carried content."""
        usage = doc.get("usage")
        if usage:
            self.take_usage(usage)
        choices = doc.get("choices")
        if not choices or not isinstance(choices[0], dict):
            return False
        choice = choices[0]
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if delta.get("tool_calls"):
                self.tool_calls.extend(delta["tool_calls"])
                return True
        else:
            content = choice.get("text")
        if isinstance(content, str) and content:
            parts = self.text_parts
            parts.append(content)
            if len(parts) >= _JOIN_PARTS:  # one string, not a small one per token
                parts[:] = ("".join(parts),)
            return True
        return False
