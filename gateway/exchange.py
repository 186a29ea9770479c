"""What happened in one request: the record that metrics and the completion event are made from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    trace_id: str = ""
    fallback: bool = False
    # Response headers the request path adds (rate limits); None: none.
    headers_out: list[tuple[bytes, bytes]] | None = None
    responded: bool = False

    @property
    def text(self) -> str:
        """The answer as the client received it."""
        return "".join(self.text_parts)
