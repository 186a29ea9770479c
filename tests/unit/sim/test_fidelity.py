"""The simulator's bodies and chunks have the keys, in the order, that real vLLM sent.

The references are the captures in tests/integration/vllm/fixtures (docs/vllm-fidelity.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from sim.protocol import ChunkMaker, chat_body, completion_body, usage

FIXTURES = Path(__file__).parents[2] / "integration" / "vllm" / "fixtures"


def _capture(name: str) -> dict[str, Any]:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"no vLLM capture {name}")
    capture: dict[str, Any] = orjson.loads(path.read_bytes())
    return capture


def _shape(value: Any) -> Any:
    """Keys in order, recursively; leaves reduced to None or 'value'."""
    if isinstance(value, dict):
        return [(key, _shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return None if value is None else "value"


def _event(data: bytes) -> Any:
    assert data.startswith(b"data: ")
    assert data.endswith(b"\n\n")
    return orjson.loads(data[6:])


def test_non_streaming_bodies() -> None:
    choices: list[tuple[str, str, str | None]] = [("Certainly.", "length", None)]
    chat = orjson.loads(chat_body("chatcmpl-1", "m", 1, choices, usage(3, 2)))
    text = orjson.loads(completion_body("cmpl-1", "m", 1, choices, usage(3, 2)))
    assert _shape(chat) == _shape(_capture("chat.json")["body"])
    assert _shape(text) == _shape(_capture("completion.json")["body"])


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_chunks(include_usage: bool) -> None:
    name = "chat_stream_usage.json" if include_usage else "chat_stream.json"
    real = [e for e in _capture(name)["events"] if e != "[DONE]"]
    maker = ChunkMaker("chat", "chatcmpl-1", "m", include_usage)
    ours = [
        _event(maker.role(0)),
        _event(maker.token(0, ' a "quoted" piece')),
        _event(maker.token(0, "end", "length")),
    ]
    if include_usage:
        ours.append(_event(maker.usage(usage(3, 2))))
    assert [_shape(e) for e in ours] == [_shape(e) for e in [*real[:2], *real[-len(ours) + 2 :]]]
    assert ours[1]["choices"][0]["delta"]["content"] == ' a "quoted" piece'


def test_completion_stream_chunks() -> None:
    real = [e for e in _capture("completion_stream_usage.json")["events"] if e != "[DONE]"]
    maker = ChunkMaker("completion", "cmpl-1", "m", True)
    ours = [
        _event(maker.token(0, "a\n")),
        _event(maker.token(0, "end", "length")),
        _event(maker.usage(usage(3, 2))),
    ]
    assert [_shape(e) for e in ours] == [_shape(e) for e in [real[0], *real[-2:]]]
