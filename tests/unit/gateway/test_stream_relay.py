"""The stream relay's per-stream bookkeeping: what it defers or compacts, it keeps exactly.

The inter-token histogram is filled once per stream (gaps counted per bucket as they come),
and a long answer's text is kept as a few joined parts: the metrics, the completion event
and the observers see what they saw when each chunk was observed and kept on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, Histogram

from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.recorder import Recorder, Recording
from tests.support.sim import SimServer
from tests.unit.observability.live import flag_settings, running

ASK = [{"role": "user", "content": "Tell me a long story."}]


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in registry.collect():
        if family.name == name:
            for s in family.samples:
                out[(s.name, s.labels.get("le", ""))] = s.value
    return out


def test_inter_token_gaps_fill_the_histogram_as_observing_each_would() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    # Only the metrics are reached by content() and _add_gaps().
    recorder = Recorder(
        instance="t", metrics=metrics, upstream_metrics=None, signer=None, observer=None
    )
    assert recorder.itl_bounds is not None
    assert recorder.itl_bounds[-1] == float("inf")
    ex = Exchange(request_id="r", kind="chat", started_at=0.0, flag="f", variant="v", model="m")
    rec = Recording(recorder, ex, "chat")
    gaps = [0.0, 0.001, 0.005, 0.02, 0.02, 0.0999, 0.1, 0.5, 3.0, 1e9, 0.04]
    now = 10.0
    assert rec.content(now, 9.5) is True
    for gap in gaps:
        now += gap
        assert rec.content(now, 9.5) is False
    assert ex.ttft_s == 0.5
    rec._add_gaps()
    rec._add_gaps()  # once only

    # The same gaps (as the float differences the recording saw) observed one by one.
    expected_registry = CollectorRegistry()
    expected = Histogram(
        "loopgate_inter_token_latency_seconds", "x", ["flag", "variant", "model", "role"],
        buckets=recorder.itl_bounds, registry=expected_registry,
    )  # fmt: skip
    child = expected.labels("f", "v", "m", "primary")
    now = 10.0
    for gap in gaps:
        child.observe((now + gap) - now)
        now += gap
    name = "loopgate_inter_token_latency_seconds"
    got = _samples(registry, name)
    want = _samples(expected_registry, name)
    assert {k: v for k, v in got.items() if not k[0].endswith("_created")} == {
        k: v for k, v in want.items() if not k[0].endswith("_created")
    }
    assert got[(name + "_count", "")] == len(gaps)


def test_a_long_answer_keeps_its_text_in_few_parts() -> None:
    ex = Exchange(request_id="r", kind="chat", started_at=0.0)
    words = [f" w{n}" for n in range(1000)]
    for word in words:
        assert ex.take_chunk({"choices": [{"delta": {"content": word}}]})
    assert not ex.take_chunk({"choices": [{"delta": {"content": ""}}]})
    assert ex.text == "".join(words)
    assert len(ex.text_parts) < 40


class Finished:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def started(self, ex: Exchange) -> None: ...
    def routed(self, ex: Exchange) -> None: ...
    def first_byte(self, ex: Exchange) -> None: ...
    def chunk(self, ex: Exchange, data: bytes) -> None: ...
    def feedback_received(self, body: object) -> None: ...

    def finished(self, ex: Exchange) -> None:
        self.exchanges.append(ex)


def test_a_relayed_stream_counts_every_gap_and_keeps_every_word(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}", output_tokens=150) for name in "ab"}
    settings = flag_settings({n: s.base_url for n, s in sims.items()}, tmp_path)
    seen = Finished()

    async def go() -> tuple[bytes, bytes]:
        async with running(settings, observers=[seen]) as (_, client):
            body = {"model": "bot", "user": "u1", "messages": ASK, "stream": True}
            answer = await client.post("/v1/chat/completions", json=body)
            scrape = await client.get("/metrics")
            return answer.content, scrape.content

    streamed, scrape = asyncio.run(go())
    words = []
    for event in streamed.split(b"\n\n"):
        if event.startswith(b"data: {"):
            doc = orjson.loads(event[6:])
            for choice in doc.get("choices") or []:
                if choice["delta"].get("content"):
                    words.append(choice["delta"]["content"])
    assert len(words) > 100
    (ex,) = seen.exchanges
    assert ex.text == "".join(words)
    assert ex.completion_tokens > 0
    count = [
        line for line in scrape.decode().splitlines()
        if line.startswith("loopgate_inter_token_latency_seconds_count{")
    ]  # fmt: skip
    assert len(count) == 1
    assert float(count[0].rsplit(" ", 1)[1]) == len(words) - 1
