"""The real openai SDK against `loopgate serve` in front of two `loopgate sim` policy versions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimFactory, SimServer

ASK: list[Any] = [{"role": "user", "content": "How do I track a parcel?"}]


@pytest.fixture(scope="module")
def sims(sim_factory_session: SimFactory) -> dict[str, SimServer]:
    """Two versions with different voices; b streams slowly enough to see chunks arrive."""
    return {
        "a": sim_factory_session(model="policy-a", style="concise", max_model_len=512),
        "b": sim_factory_session(model="policy-b", style="friendly", itl=0.03, output_tokens=24),
    }


@pytest.fixture(scope="module")
def gateway(
    module_gateway_factory: Callable[..., GatewayServer], sims: dict[str, SimServer]
) -> GatewayServer:
    """Models `alpha` and `beta`, one per version."""
    config = {
        "pools": {
            "a": pool(sims["a"].base_url, served_model="policy-a"),
            "b": pool(sims["b"].base_url, served_model="policy-b"),
        },
        "models": {"alpha": {"pool": "a"}, "beta": {"pool": "b"}},
    }
    return module_gateway_factory(config)


def test_models_lists_what_apps_may_ask_for(gateway: GatewayServer) -> None:
    assert sorted(m.id for m in gateway.client().models.list()) == ["alpha", "beta"]


def test_chat_is_answered_by_the_versions_pool_with_model_rewritten(
    gateway: GatewayServer, sims: dict[str, SimServer]
) -> None:
    client = gateway.client()
    alpha = client.chat.completions.create(model="alpha", messages=ASK)
    beta = client.chat.completions.create(model="beta", messages=ASK)
    assert alpha.model == "policy-a"
    assert beta.model == "policy-b"
    assert alpha.choices[0].message.content != beta.choices[0].message.content
    assert sims["a"].last_request()["body"]["model"] == "policy-a"
    assert alpha.usage is not None
    assert alpha.usage.completion_tokens > 0
    assert alpha.id.startswith("lg1.")


def test_every_field_the_gateway_does_not_own_reaches_the_upstream_unchanged(
    gateway: GatewayServer, sims: dict[str, SimServer]
) -> None:
    extra = {
        "top_k": 5,
        "repetition_penalty": 1.1,
        "guided_choice": ["yes", "no"],
        "structured_outputs": {"choice": ["yes", "no"]},
        "chat_template_kwargs": {"enable_thinking": False},
    }
    tools = [
        {
            "type": "function",
            "function": {"name": "track", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    gateway.client().chat.completions.create(
        model="alpha",
        messages=ASK,
        temperature=0.3,
        logprobs=True,
        top_logprobs=2,
        seed=7,
        tools=tools,  # type: ignore[arg-type]
        extra_body=extra,
    )
    body = sims["a"].last_request()["body"]
    sent = {
        "messages": ASK,
        "temperature": 0.3,
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "tools": tools,
        **extra,
    }
    for key, value in sent.items():
        assert body[key] == value, key


def test_legacy_completions_stream_and_not(gateway: GatewayServer) -> None:
    client = gateway.client()
    whole = client.completions.create(model="alpha", prompt="Parcels are", max_tokens=8)
    assert whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model="alpha", prompt="Parcels", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("lg1.")


def test_stream_with_usage_ends_with_the_usage_chunk(gateway: GatewayServer) -> None:
    stream = gateway.client().chat.completions.create(
        model="alpha", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_usage_gets_no_usage_chunk(gateway: GatewayServer) -> None:
    chunks = list(
        gateway.client().chat.completions.create(model="alpha", messages=ASK, stream=True)
    )
    assert all(c.choices for c in chunks)  # apps indexing choices[0] must not break
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_stream_is_relayed_as_it_is_generated(gateway: GatewayServer) -> None:
    """24 tokens at 30 ms apart: a buffering gateway would deliver them all at once."""
    arrivals = []
    stream = gateway.client().chat.completions.create(model="beta", messages=ASK, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] > 0.2


def test_async_client_streams_and_answers_concurrently(gateway: GatewayServer) -> None:
    async def run() -> list[str]:
        client = gateway.async_client()

        async def one(i: int) -> str:
            if i % 2:
                answer = await client.chat.completions.create(model="alpha", messages=ASK)
                return answer.choices[0].message.content or ""
            parts = []
            stream = await client.chat.completions.create(model="alpha", messages=ASK, stream=True)
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
            return "".join(parts)

        try:
            return await asyncio.gather(*(one(i) for i in range(12)))
        finally:
            await client.close()

    answers = asyncio.run(run())
    assert all(answers)


def test_the_upstreams_own_refusal_reaches_the_sdk_unchanged(
    gateway: GatewayServer, sims: dict[str, SimServer]
) -> None:
    direct: openai.BadRequestError | None = None
    try:
        sims["a"].client(max_retries=0).chat.completions.create(
            model="policy-a", messages=ASK, max_tokens=4096
        )
    except openai.BadRequestError as exc:
        direct = exc
    assert direct is not None
    with pytest.raises(openai.BadRequestError) as through:
        gateway.client().chat.completions.create(model="alpha", messages=ASK, max_tokens=4096)
    assert through.value.body == direct.body
    with pytest.raises(openai.BadRequestError):
        gateway.client().chat.completions.create(
            model="alpha", messages=ASK, max_tokens=4096, stream=True
        )


def test_response_headers_name_the_flag_and_variant(gateway: GatewayServer) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(model="beta", messages=ASK)
    assert raw.headers["x-loopgate-flag"] == "beta"
    assert raw.headers["x-loopgate-variant"] == "b"
    assert float(raw.headers["x-loopgate-overhead-ms"]) >= 0
    assert raw.headers["x-request-id"]
    answer = raw.parse()
    assert answer.model_extra is not None
    assert answer.model_extra["loopgate"] == {"flag": "beta", "variant": "b"}


def test_a_client_leaving_mid_stream_cancels_the_simulated_generation(
    gateway_factory: Callable[..., GatewayServer], sim_factory: SimFactory
) -> None:
    slow = sim_factory(model="slow", itl=0.2, output_tokens=60)
    gw = gateway_factory(
        {"pools": {"s": pool(slow.base_url, served_model="slow")}, "models": {"s": {"pool": "s"}}}
    )
    stream = gw.client().chat.completions.create(model="s", messages=ASK, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    stats = slow.wait_stats(cancelled=1)
    assert stats["completed"] == 0
