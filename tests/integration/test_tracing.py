"""Traces of a streamed request through an in-process gateway and a real simulator.

An in-memory span exporter shows the span tree (server -> routing, upstream client, sink),
the GenAI and OpenFeature attributes, the caller's traceparent continued and the upstream
span's context sent upstream, the trace id in the completion event, and feedback recorded
as a gen_ai.evaluation.result event on the answer's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.settings import Settings
from tests.support.sim import SimServer
from tests.unit.observability.live import flag_settings, running

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
BODY: dict[str, Any] = {
    "model": "bot",
    "user": "unit-7",
    "stream": True,
    "max_tokens": 12,
    "temperature": 0.5,
    "messages": [{"role": "user", "content": "Where is my parcel?"}],
}


@pytest.fixture
def settings(sim_factory: Callable[..., SimServer], tmp_path: Path) -> Settings:
    """Flag `bot` over two simulators; tracing off in config (the exporter turns it on)."""
    a, b = sim_factory(model="policy-a"), sim_factory(model="policy-b")
    return flag_settings({"a": a.base_url, "b": b.base_url}, tmp_path)


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_streamed_request_span_tree(settings: Settings) -> None:
    exporter = InMemorySpanExporter()

    async def go() -> tuple[str, str, Any]:
        async with running(settings, exporter) as (app, client):
            answer = await client.post(
                "/v1/chat/completions", json=BODY, headers={"traceparent": TRACEPARENT}
            )
            assert answer.status_code == 200
            assert answer.text.rstrip().endswith("data: [DONE]")
            variant = answer.headers["x-loopgate-variant"]
            first = next(line for line in answer.text.splitlines() if line.startswith("data: {"))
            response_id = first.split('"id":"', 1)[1].split('"', 1)[0]
            feedback_trace = app.state.runtime.tracing.record_feedback(
                response_id, "thumbs_down", flag="bot", variant=variant, category="wrong"
            )
            return variant, response_id, feedback_trace

    variant, response_id, feedback_trace = asyncio.run(go())
    spans = exporter.get_finished_spans()
    names = _by_name(spans)
    server = names["chat bot"]
    client = names[f"chat policy-{variant}"]
    route = names["route bot"]
    sink = names["emit completion"]
    feedback = names["evaluate user_feedback"]

    # One trace, the caller's; the server span's parent is the caller's span.
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == CALLER_SPAN
    for child in (route, client, sink):
        assert child.parent is not None
        assert child.parent.span_id == server.context.span_id
    assert client.kind == SpanKind.CLIENT
    assert route.kind == sink.kind == SpanKind.INTERNAL

    attrs = dict(server.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "bot"
    assert attrs["gen_ai.response.model"] == f"policy-{variant}"
    assert attrs["gen_ai.request.max_tokens"] == 12
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("length",)  # max_tokens 12 < 16
    assert attrs["gen_ai.response.id"] == response_id
    assert attrs["feature_flag.key"] == "bot"
    assert attrs["feature_flag.result.variant"] == variant
    assert attrs["feature_flag.variant"] == variant
    assert attrs["feature_flag.result.reason"] == "split"
    assert not any(k.startswith("gen_ai.system") or "prompt_tokens" in k for k in attrs)
    assert dict(client.attributes or {})["server.address"] == "127.0.0.1"

    # Feedback: a child of the answer's server span, with the evaluation event.
    assert feedback_trace == TRACE_ID
    assert feedback.parent is not None
    assert feedback.parent.span_id == server.context.span_id
    (event,) = feedback.events
    assert event.name == "gen_ai.evaluation.result"
    assert dict(event.attributes or {}) == {
        "gen_ai.evaluation.name": "user_feedback",
        "gen_ai.evaluation.score.label": "thumbs_down",
        "gen_ai.evaluation.score.value": 0.0,
        "gen_ai.evaluation.explanation": "wrong",
        "gen_ai.response.id": response_id,
    }


def test_upstream_receives_the_client_span_context(
    tmp_path: Path, sim_factory: Callable[..., SimServer]
) -> None:
    sim = sim_factory(model="policy-a")
    settings = flag_settings({"a": sim.base_url}, tmp_path)
    exporter = InMemorySpanExporter()

    async def go() -> None:
        async with running(settings, exporter) as (_, client):
            answer = await client.post(
                "/v1/chat/completions", json=BODY, headers={"traceparent": TRACEPARENT}
            )
            assert answer.status_code == 200

    asyncio.run(go())
    upstream = _by_name(exporter.get_finished_spans())["chat policy-a"]
    sent = sim.last_request()["headers"]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{format(upstream.context.span_id, '016x')}-01"


def test_tracing_off_makes_no_spans_and_forwards_the_callers_traceparent(
    tmp_path: Path, sim_factory: Callable[..., SimServer]
) -> None:
    sim = sim_factory(model="policy-a")
    settings = flag_settings({"a": sim.base_url}, tmp_path)

    async def go() -> None:
        async with running(settings) as (app, client):
            assert app.state.runtime.tracing is None
            answer = await client.post(
                "/v1/chat/completions", json=BODY, headers={"traceparent": TRACEPARENT}
            )
            assert answer.status_code == 200

    asyncio.run(go())
    assert sim.last_request()["headers"]["traceparent"] == TRACEPARENT


def test_feedback_on_an_unknown_answer_starts_its_own_trace(settings: Settings) -> None:
    exporter = InMemorySpanExporter()

    async def go() -> str:
        async with running(settings, exporter) as (app, _):
            trace_id: str = app.state.runtime.tracing.record_feedback("lg1.x.y", "rating", value=4)
            return trace_id

    trace_id = asyncio.run(go())
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert format(span.context.trace_id, "032x") == trace_id
    assert dict(span.events[0].attributes or {})["gen_ai.evaluation.score.value"] == 4.0
