"""An observer added in one place (create_app's `observers`) sees every request and feedback.

This is the seam shadow traffic and online evaluators hook into: the test adds one observer
and checks it sees whole answers, streamed ones chunk by chunk, refused requests and
feedback, with tracing off (the plain recorder) and on (the traced one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from feedback.schema import FeedbackBody
from gateway.exchange import Exchange
from tests.support.sim import SimServer
from tests.unit.observability.live import flag_settings, running

ASK = [{"role": "user", "content": "Where is my parcel?"}]


class TallyObserver:
    """Writes down every moment it is shown, by request id."""

    def __init__(self) -> None:
        self.moments: dict[str, list[str]] = {}
        self.chunks: dict[str, bytearray] = {}
        self.exchanges: dict[str, Exchange] = {}
        self.feedback: list[FeedbackBody] = []

    def started(self, ex: Exchange) -> None:
        self.moments[ex.request_id] = ["started"]

    def routed(self, ex: Exchange) -> None:
        self.moments[ex.request_id].append(f"routed {ex.flag}/{ex.variant}")

    def first_byte(self, ex: Exchange) -> None:
        self.moments[ex.request_id].append("first_byte")

    def chunk(self, ex: Exchange, data: bytes) -> None:
        if self.moments[ex.request_id][-1] != "chunk":
            self.moments[ex.request_id].append("chunk")
        self.chunks.setdefault(ex.request_id, bytearray()).extend(data)

    def finished(self, ex: Exchange) -> None:
        self.moments[ex.request_id].append(f"finished {ex.http_status}")
        self.exchanges[ex.request_id] = ex

    def feedback_received(self, body: FeedbackBody) -> None:
        self.feedback.append(body)


@pytest.mark.parametrize("tracing", [False, True], ids=["tracing-off", "tracing-on"])
def test_one_observer_sees_every_request_streamed_included(
    sim_factory: Callable[..., SimServer], tmp_path: Path, tracing: bool
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}") for name in "ab"}
    settings = flag_settings({n: s.base_url for n, s in sims.items()}, tmp_path)
    tally = TallyObserver()
    exporter = InMemorySpanExporter() if tracing else None

    async def go() -> dict[str, bytes]:
        bodies: dict[str, bytes] = {}
        async with running(settings, exporter, observers=[tally]) as (_, client):
            for name, body in {
                "whole": {"model": "bot", "user": "u1", "messages": ASK},
                "stream": {"model": "bot", "user": "u1", "messages": ASK, "stream": True},
                "unknown": {"model": "nope", "messages": ASK},
            }.items():
                answer = await client.post(
                    "/v1/chat/completions", json=body, headers={"X-Request-Id": name}
                )
                bodies[name] = answer.content
            whole_id = (await client.post("/v1/chat/completions", json={
                "model": "bot", "user": "u1", "messages": ASK, "stream": False,
            }, headers={"X-Request-Id": "judged"})).json()["id"]  # fmt: skip
            judged = await client.post(
                "/v1/feedback", json={"response_id": whole_id, "kind": "thumbs_up"}
            )
            assert judged.status_code == 200
        return bodies

    bodies = asyncio.run(go())
    assert set(tally.moments) == {"whole", "stream", "unknown", "judged"}
    variant = tally.exchanges["whole"].variant
    assert tally.moments["whole"] == [
        "started",
        f"routed bot/{variant}",
        "first_byte",
        "finished 200",
    ]
    assert tally.moments["stream"] == [
        "started",
        f"routed bot/{variant}",
        "first_byte",
        "chunk",
        "finished 200",
    ]
    # The chunks it saw are what the client got, signed ids swapped in.
    assert bytes(tally.chunks["stream"]) == bodies["stream"]
    assert tally.exchanges["stream"].response_id.encode() in bodies["stream"]
    assert tally.exchanges["stream"].completion_tokens > 0
    assert tally.moments["unknown"] == ["started", "finished 404"]
    assert [(f.response_id, f.kind, f.flag) for f in tally.feedback] == [
        (tally.exchanges["judged"].response_id, "thumbs_up", "bot")
    ]
    if exporter is not None:
        assert {s.name for s in exporter.get_finished_spans()} >= {"chat bot", "emit completion"}


class BrokenObserver(TallyObserver):
    """Fails at every moment it is shown."""

    def started(self, ex: Exchange) -> None:
        raise RuntimeError("observer bug")

    def chunk(self, ex: Exchange, data: bytes) -> None:
        raise RuntimeError("observer bug")

    def finished(self, ex: Exchange) -> None:
        raise RuntimeError("observer bug")


def test_a_failing_observer_does_not_fail_requests(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}") for name in "ab"}
    settings = flag_settings({n: s.base_url for n, s in sims.items()}, tmp_path)
    tally = TallyObserver()

    async def go() -> list[int]:
        async with running(settings, observers=[BrokenObserver(), tally]) as (_, client):
            statuses = []
            for stream in (False, True):
                body = {"model": "bot", "messages": ASK, "stream": stream}
                answer = await client.post("/v1/chat/completions", json=body)
                assert b"observer bug" not in answer.content
                statuses.append(answer.status_code)
            return statuses

    assert asyncio.run(go()) == [200, 200]
    # The observer after the broken one still saw both requests through.
    assert [m[-1] for m in tally.moments.values()] == ["finished 200", "finished 200"]


class EndsOnlyObserver(TallyObserver):
    """Reads no bytes: opts out of the per-chunk call, as the evaluators do."""

    reads_chunks = False


def test_an_observer_that_reads_no_bytes_is_not_called_per_chunk(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}") for name in "ab"}
    settings = flag_settings({n: s.base_url for n, s in sims.items()}, tmp_path)
    ends, tally = EndsOnlyObserver(), TallyObserver()

    async def go() -> None:
        async with running(settings, observers=[ends, tally]) as (_, client):
            body = {"model": "bot", "messages": ASK, "stream": True}
            answer = await client.post(
                "/v1/chat/completions", json=body, headers={"X-Request-Id": "s"}
            )
            assert answer.status_code == 200

    asyncio.run(go())
    assert "chunk" not in ends.moments["s"]
    assert ends.moments["s"][-1] == "finished 200"
    assert "chunk" in tally.moments["s"]  # the other observer still reads every chunk
