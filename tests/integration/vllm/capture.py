"""Captures real vLLM answers as JSON fixtures for the simulator (docs/vllm-fidelity.md).

Run from the repo root with the gateway venv: `.venv/bin/python -m tests.integration.vllm.capture`
(starts its own server), or `... capture --base-url http://127.0.0.1:PORT` against a running one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.vllm import BASE_MODEL, LORA_MODEL, running_vllm

FIXTURES = Path(__file__).parent / "fixtures"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Hello, how can I help you today?"}]

# name -> (method, path, body); a str body is sent as is, to capture vLLM's parse errors.
Sample = tuple[str, str, dict[str, Any] | str | None]
SAMPLES: dict[str, Sample] = {
    "chat": ("POST", CHAT, {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 8, "seed": 7}),
    "chat_lora": (
        "POST",
        CHAT,
        {"model": LORA_MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0},
    ),
    "chat_base_greedy": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0},
    ),
    "completion": (
        "POST",
        COMPLETIONS,
        {"model": BASE_MODEL, "prompt": "The quick brown fox", "max_tokens": 8, "seed": 7},
    ),
    "chat_stream_usage": (
        "POST",
        CHAT,
        {
            "model": BASE_MODEL,
            "messages": HELLO,
            "max_tokens": 4,
            "seed": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "chat_stream": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 3, "seed": 7, "stream": True},
    ),
    "completion_stream_usage": (
        "POST",
        COMPLETIONS,
        {
            "model": BASE_MODEL,
            "prompt": "The quick brown fox",
            "max_tokens": 3,
            "seed": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "chat_stream_n2": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 2, "n": 2, "stream": True},
    ),
    "chat_top_k1_seed1": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 8, "top_k": 1, "seed": 1},
    ),
    "chat_top_k1_seed2": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 8, "top_k": 1, "seed": 2},
    ),
    "chat_structured_choice": (
        "POST",
        CHAT,
        {
            "model": BASE_MODEL,
            "messages": HELLO,
            "max_tokens": 8,
            "structured_outputs": {"choice": ["yes", "no"]},
        },
    ),
    "chat_guided_choice_legacy": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 8, "guided_choice": ["yes", "no"]},
    ),
    "chat_response_format_json_schema": (
        "POST",
        CHAT,
        {
            "model": BASE_MODEL,
            "messages": HELLO,
            "max_tokens": 40,
            "seed": 3,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": {
                        "type": "object",
                        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                        "required": ["answer"],
                        "additionalProperties": False,
                    },
                },
            },
        },
    ),
    "error_unknown_model": ("POST", CHAT, {"model": "no-such-model", "messages": HELLO}),
    "error_unknown_model_stream": (
        "POST",
        CHAT,
        {"model": "no-such-model", "messages": HELLO, "stream": True},
    ),
    "error_max_tokens_too_large": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 4096},
    ),
    "error_max_tokens_too_large_stream": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 4096, "stream": True},
    ),
    "error_completion_max_tokens_too_large": (
        "POST",
        COMPLETIONS,
        {"model": BASE_MODEL, "prompt": "hi", "max_tokens": 4096},
    ),
    "error_prompt_too_long": (
        "POST",
        COMPLETIONS,
        {"model": BASE_MODEL, "prompt": "hello " * 2000, "max_tokens": 1},
    ),
    "error_bad_json": ("POST", CHAT, '{"model": "tiny-base", "messages": ['),
    "error_invalid_field_type": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "temperature": "hot"},
    ),
    "error_missing_messages": ("POST", CHAT, {"model": BASE_MODEL}),
    "error_negative_max_tokens": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": -1},
    ),
    "unknown_extra_field": (
        "POST",
        CHAT,
        {"model": BASE_MODEL, "messages": HELLO, "max_tokens": 2, "loopgate_nonsense": 1},
    ),
    "models": ("GET", "/v1/models", None),
    "health": ("GET", "/health", None),
    "version": ("GET", "/version", None),
    "error_not_found_path": ("GET", "/v1/nope", None),
}

KEPT_HEADERS = ("content-type", "content-length", "transfer-encoding", "x-request-id")


def sse_events(text: str) -> list[Any]:
    """SSE body -> list of data payloads: parsed JSON, or the raw string (e.g. "[DONE]")."""
    events: list[Any] = []
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        try:
            events.append(json.loads(data))
        except json.JSONDecodeError:
            events.append(data)
    return events


def shape(value: Any) -> Any:
    """Keys and JSON types, values dropped: what must match between vLLM, sim and fixture."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def capture_shape(got: dict[str, Any]) -> Any:
    """Shape of one capture: status, body, or first/last SSE events and the terminator."""
    if "events" in got:
        events = got["events"]
        return [got["status"], shape(events[0]), shape(events[-2]), events[-1]]
    return [got["status"], shape(got.get("body", got.get("body_text")))]


def capture(client: httpx.Client, name: str, sample: Sample) -> dict[str, Any]:
    """One request -> {request, status, headers, body | raw_sse + events}."""
    method, path, body = sample
    if isinstance(body, str):
        resp = client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        resp = client.request(method, path, json=body)
    out: dict[str, Any] = {
        "name": name,
        "request": {"method": method, "path": path, "body": body},
        "status": resp.status_code,
        "headers": {k: v for k, v in resp.headers.items() if k.lower() in KEPT_HEADERS},
    }
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        out["raw_sse"] = resp.text
        out["events"] = sse_events(resp.text)
    else:
        try:
            out["body"] = resp.json()
        except json.JSONDecodeError:
            out["body_text"] = resp.text
    return out


def capture_all(base_url: str, dest: Path) -> None:
    """Captures every sample plus /metrics into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        for name, sample in SAMPLES.items():
            got = capture(client, name, sample)
            (dest / f"{name}.json").write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
            print(f"{name}: {got['status']}", file=sys.stderr)
        (dest / "metrics.txt").write_text(client.get("/metrics").text)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: capture against --base-url or a fresh server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url")
    parser.add_argument("--dest", type=Path, default=FIXTURES)
    args = parser.parse_args(argv)
    if args.base_url:
        capture_all(args.base_url, args.dest)
    else:
        with running_vllm() as server:
            capture_all(server.base_url, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
