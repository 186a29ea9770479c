"""OpenTelemetry GenAI metrics and gen_ai.provider.name, read with in-memory readers.

An in-process gateway over two real simulators, tracing on through an in-memory span
exporter and an InMemoryMetricReader: a streamed and a whole answer record
gen_ai.client.token.usage (input and output) and gen_ai.server.time_to_first_token (the
stream only), with the attributes the GenAI conventions name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.tracing import PROVIDER
from tests.support.sim import SimServer
from tests.unit.observability.live import flag_settings, running

ASK = [{"role": "user", "content": "Where is my parcel?"}]


def _points(reader: InMemoryMetricReader) -> dict[str, list[HistogramDataPoint]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[HistogramDataPoint]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                assert metric.name not in out
                points = list(metric.data.data_points)
                assert all(isinstance(p, HistogramDataPoint) for p in points)
                out[metric.name] = points  # type: ignore[assignment]
    return out


def test_token_usage_and_time_to_first_token(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}") for name in "ab"}
    settings = flag_settings({n: s.base_url for n, s in sims.items()}, tmp_path)
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()

    async def go() -> dict[str, Any]:
        async with running(settings, spans, reader) as (_, client):
            usage: dict[str, Any] = {}
            for stream in (True, False):
                body = {"model": "bot", "user": "unit-3", "messages": ASK, "stream": stream}
                answer = await client.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200
                if not stream:
                    usage = answer.json()["usage"]
            return usage

    usage = asyncio.run(go())
    points = _points(reader)
    tokens = points["gen_ai.client.token.usage"]
    by_type = {p.attributes["gen_ai.token.type"]: p for p in tokens}
    assert set(by_type) == {"input", "output"}
    # The same unit both times: the same variant, so one point per token type.
    assert by_type["input"].count == 2
    assert by_type["input"].sum == 2 * usage["prompt_tokens"]
    assert by_type["output"].count == 2
    assert by_type["output"].min > 0
    (ttft,) = points["gen_ai.server.time_to_first_token"]
    assert ttft.count == 1  # the stream only
    assert 0 < ttft.sum < 10
    for point in (*tokens, ttft):
        attributes = dict(point.attributes)
        assert attributes["gen_ai.provider.name"] == PROVIDER
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "bot"
        assert attributes["gen_ai.response.model"] in {"policy-a", "policy-b"}
        assert attributes["server.address"] == "127.0.0.1"
        assert isinstance(attributes["server.port"], int)
        # Bounded attributes only: never the user, the response id or the app's text.
        assert not {"user", "gen_ai.response.id"} & set(attributes)
    server = [s for s in spans.get_finished_spans() if s.name == "chat bot"]
    assert len(server) == 2
    assert all(s.attributes and s.attributes["gen_ai.provider.name"] == PROVIDER for s in server)
