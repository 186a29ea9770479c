"""Faults, cancellation, latency and load gauges of a `loopgate sim` process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.ports import wait_until
from tests.support.sim import SimFactory

MESSAGES: Any = [{"role": "user", "content": "Summarise the quarterly revenue report."}]


def test_error_rate_is_roughly_honoured(sim_factory: SimFactory) -> None:
    sim = sim_factory(error_rate=0.3, seed=7)
    errors: list[openai.InternalServerError] = []
    with sim.client() as client:
        for _ in range(100):
            try:
                client.chat.completions.create(model=sim.model, messages=MESSAGES, max_tokens=2)
            except openai.InternalServerError as err:
                errors.append(err)
    failures = len(errors)
    assert all(e.status_code == 500 for e in errors)
    assert all(isinstance(e.body, dict) and e.body["type"] == "InternalServerError" for e in errors)
    assert 0.18 <= failures / 100 <= 0.42
    stats = sim.stats()
    assert stats["errors"] == failures
    assert stats["completed"] == 100 - failures


def test_midstream_failure_truncates_the_stream(sim_factory: SimFactory) -> None:
    sim = sim_factory(midstream_error_rate=1.0, output_tokens=40)
    received: list[str] = []
    with sim.client() as client, pytest.raises((httpx.HTTPError, openai.APIError)):  # noqa: PT012
        stream = client.chat.completions.create(model=sim.model, messages=MESSAGES, stream=True)
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    # The role chunk and a few tokens arrived before the connection dropped.
    assert 1 <= len(received) <= 5
    assert sim.stats()["errors"] == 1


def test_stalled_request_times_out_and_is_seen_cancelled(sim_factory: SimFactory) -> None:
    sim = sim_factory(stall_rate=1.0)
    started = time.monotonic()
    with sim.client(timeout=0.5) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=sim.model, messages=MESSAGES)
    assert time.monotonic() - started < 5
    stats = sim.wait_stats(stalled=1, cancelled=1)
    assert stats["completed"] == 0
    assert sim.last_request()["outcome"] == "cancelled"


def test_client_disconnect_mid_stream_is_counted_cancelled(sim_factory: SimFactory) -> None:
    sim = sim_factory(itl=0.05, output_tokens=200)
    with sim.client() as client:
        stream = client.chat.completions.create(model=sim.model, messages=MESSAGES, stream=True)
        for count, _ in enumerate(stream):
            if count == 2:
                break
        stream.close()
    stats = sim.wait_stats(cancelled=1)
    assert stats["completed"] == 0
    # The slot and KV tokens of the dropped request were given back.
    wait_until(lambda: sim.stats()["running"] == 0, 5, "slot released")
    assert sim.metric("vllm:kv_cache_usage_perc") == 0.0


def test_latency_profile_is_applied(sim_factory: SimFactory) -> None:
    sim = sim_factory(ttft=0.3, itl=0.02, output_tokens=20)
    with sim.client() as client:
        started = time.monotonic()
        stream = client.chat.completions.create(model=sim.model, messages=MESSAGES, stream=True)
        chunks = iter(stream)
        next(chunks)
        first = time.monotonic() - started
        for _ in chunks:
            pass
        total = time.monotonic() - started
    assert first >= 0.25
    assert total >= 0.25 + 0.015 * 15
    assert sim.metric("vllm:time_to_first_token_seconds_count") == 1
    assert sim.metric("vllm:inter_token_latency_seconds_count") >= 10


def test_gauges_move_under_concurrent_load(sim_factory: SimFactory) -> None:
    sim = sim_factory(ttft=0.8, max_num_seqs=2)

    async def load() -> list[float]:
        async with sim.async_client() as client:
            calls = [
                asyncio.create_task(
                    client.chat.completions.create(model=sim.model, messages=MESSAGES)
                )
                for _ in range(5)
            ]
            seen: list[float] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not all(c.done() for c in calls):
                samples = await asyncio.to_thread(sim.metrics)
                running = _sample(samples, "vllm:num_requests_running")
                waiting = _sample(samples, "vllm:num_requests_waiting")
                kv = _sample(samples, "vllm:kv_cache_usage_perc")
                seen.append(running)
                if (running, waiting) == (2, 3):
                    assert kv > 0
                    break
                await asyncio.sleep(0.05)
            await asyncio.gather(*calls)
            return seen

    seen = asyncio.run(load())
    assert seen[-1] == 2
    assert sim.metric("vllm:num_requests_running") == 0
    assert sim.metric("vllm:num_requests_waiting") == 0
    assert sim.metric("vllm:time_to_first_token_seconds_count") == 5
    # Queued requests wait for a slot before their ttft starts, so the last ones take longer.
    assert sim.metric("vllm:e2e_request_latency_seconds_sum") >= 0.8 * 2 + 1.6 * 2 + 2.4
    successes = sum(
        value for key, value in sim.metrics().items() if key.startswith("vllm:request_success")
    )
    assert successes == 5


def _sample(samples: dict[str, float], name: str) -> float:
    return next(value for key, value in samples.items() if key.split("{", 1)[0] == name)
