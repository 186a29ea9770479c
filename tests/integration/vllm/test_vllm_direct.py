"""The openai SDK straight against real vLLM: the facts docs/vllm-fidelity.md records.

These prove the fixture and pin vLLM's behaviour that the gateway and the simulator rely on;
the same facts, through `loopgate serve`, are tested elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.vllm.capture import FIXTURES, SAMPLES, capture, capture_shape
from tests.support.ports import wait_until
from tests.support.vllm import SETUP_TIMEOUT_S, VllmServer

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(SETUP_TIMEOUT_S)]

HELLO: list[Any] = [{"role": "user", "content": "Hello, how can I help you today?"}]


@pytest.fixture
def client(vllm_server: VllmServer) -> Iterator[openai.OpenAI]:
    """SDK client on the real server; no retries, so errors show as vLLM sent them."""
    with openai.OpenAI(base_url=vllm_server.api_base, api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def http(vllm_server: VllmServer) -> Iterator[httpx.Client]:
    """Raw HTTP client, for what the SDK hides (SSE lines, bad JSON, empty bodies)."""
    with httpx.Client(base_url=vllm_server.base_url, timeout=60.0) as raw:
        yield raw


def chat_text(client: openai.OpenAI, model: str, **kw: Any) -> str:
    """Content of a non-streaming chat answer."""
    resp = client.chat.completions.create(model=model, messages=HELLO, **kw)
    return resp.choices[0].message.content or ""


def metrics(http: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from /metrics."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_models_lists_base_and_adapter(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {vllm_server.base_model, vllm_server.lora_model}
    lora = models[vllm_server.lora_model].model_dump()
    assert lora["parent"] == vllm_server.base_model
    assert models[vllm_server.base_model].model_dump()["max_model_len"] == 512
    assert all(m.owned_by == "vllm" for m in models.values())


def test_chat_non_streaming(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    resp = client.chat.completions.create(
        model=vllm_server.base_model, messages=HELLO, max_tokens=8, seed=7
    )
    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    assert resp.model == vllm_server.base_model
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8
    assert (resp.system_fingerprint or "").startswith("vllm-0.32.0")
    # vLLM-only extras the gateway must pass through untouched.
    extra = resp.model_dump()
    assert extra["choices"][0]["stop_reason"] is None
    assert "prompt_logprobs" in extra


def test_completion_non_streaming(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    resp = client.completions.create(
        model=vllm_server.base_model, prompt="The quick brown fox", max_tokens=8, seed=7
    )
    assert resp.id.startswith("cmpl-")
    assert resp.object == "text_completion"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 8


def test_chat_stream_with_usage(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    chunks = list(
        client.chat.completions.create(
            model=vllm_server.base_model,
            messages=HELLO,
            max_tokens=4,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first, *content, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # No separate empty finish chunk: the last token's chunk carries finish_reason.
    assert finish.choices[0].finish_reason == "length"
    assert finish.choices[0].delta.content
    # Up to one chunk per token: a slow front end coalesces tokens into fewer chunks.
    assert len(content) <= 3
    assert all(c.choices[0].finish_reason is None for c in [first, *content])
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 4
    # With include_usage, vLLM sends usage: null on the other chunks (or leaves it out).
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_raw_lines(http: httpx.Client, vllm_server: VllmServer) -> None:
    body = {"model": vllm_server.base_model, "messages": HELLO, "max_tokens": 2, "stream": True}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = resp.text.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert not any("usage" in p for p in payloads)
    assert payloads[-1]["system_fingerprint"].startswith("vllm-")


def test_completion_stream_with_usage(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    chunks = list(
        client.completions.create(
            model=vllm_server.base_model,
            prompt="The quick brown fox",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # Completions have no role chunk. Chunks are not tokens: a token ending inside a UTF-8
    # character is held back (or sent as ""), so only the last two chunks have a fixed role.
    assert 2 <= len(chunks) <= 4
    assert [c.choices[0].finish_reason for c in chunks[:-2]] == [None] * (len(chunks) - 2)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_top_k_one_is_greedy_whatever_the_seed(
    client: openai.OpenAI, vllm_server: VllmServer
) -> None:
    model = vllm_server.base_model
    greedy = chat_text(client, model, max_tokens=8, temperature=0)
    top1 = {
        chat_text(client, model, max_tokens=8, temperature=1.0, seed=s, extra_body={"top_k": 1})
        for s in (1, 2, 3)
    }
    sampled = {chat_text(client, model, max_tokens=8, temperature=1.0, seed=s) for s in (1, 2, 3)}
    assert top1 == {greedy}
    # Random weights: the distribution is near uniform over ~500 tokens, so seeds differ.
    assert len(sampled) == 3


def test_seed_makes_sampling_repeatable(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    runs = {chat_text(client, vllm_server.base_model, max_tokens=8, seed=42) for _ in range(2)}
    assert len(runs) == 1


def test_structured_outputs_choice_constrains(
    client: openai.OpenAI, vllm_server: VllmServer
) -> None:
    got = {
        chat_text(
            client,
            vllm_server.base_model,
            max_tokens=8,
            seed=s,
            extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
        )
        for s in range(6)
    }
    assert got <= {"yes", "no"}


def test_response_format_json_schema_constrains(
    client: openai.OpenAI, vllm_server: VllmServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    text = chat_text(
        client,
        vllm_server.base_model,
        max_tokens=200,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert json.loads(text)["answer"] in {"yes", "no"}


def test_removed_guided_choice_is_ignored(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    # vLLM 0.32 dropped guided_*: it logs a warning and samples unconstrained, with a 200.
    got = {
        chat_text(
            client,
            vllm_server.base_model,
            max_tokens=8,
            seed=s,
            extra_body={"guided_choice": ["yes", "no"]},
        )
        for s in range(3)
    }
    assert not got <= {"yes", "no"}


def test_unknown_fields_are_accepted(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    text = chat_text(client, vllm_server.base_model, max_tokens=2, extra_body={"lg_x": 1})
    assert isinstance(text, str)


def test_lora_adapter_is_a_second_policy(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    base = client.chat.completions.create(
        model=vllm_server.base_model, messages=HELLO, max_tokens=8, temperature=0
    )
    lora = client.chat.completions.create(
        model=vllm_server.lora_model, messages=HELLO, max_tokens=8, temperature=0
    )
    assert lora.model == vllm_server.lora_model
    assert base.choices[0].message.content != lora.choices[0].message.content


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    body = caught.value.response.json()
    # vLLM's code is the HTTP status as an int, and the type is an exception name.
    assert body == {
        "error": {
            "message": "The model `no-such-model` does not exist. Valid aliases: tiny-base.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_over_model_len_is_400(
    client: openai.OpenAI, vllm_server: VllmServer, stream: bool
) -> None:
    # Refused before any SSE starts: a plain JSON 400 even when stream=True.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=vllm_server.base_model, messages=HELLO, max_tokens=4096, stream=stream
        )
    assert caught.value.response.headers["content-type"] == "application/json"
    error = caught.value.response.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["param"] == "max_tokens"
    assert error["code"] == 400
    assert error["message"].startswith("max_tokens=4096 cannot be greater than max_model_len=512")


def test_invalid_field_is_400(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=vllm_server.base_model, messages=HELLO, extra_body={"temperature": "hot"}
        )
    error = caught.value.response.json()["error"]
    assert error["type"] == "Bad Request"
    assert error["param"] == "body.temperature"
    assert error["code"] == 400


def test_bad_json_is_400(http: httpx.Client) -> None:
    resp = http.post(
        "/v1/chat/completions",
        content=b'{"model": "tiny-base", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "Bad Request"
    assert error["code"] == 400
    assert "JSON decode error" in error["message"]


def test_health_is_empty_200(http: httpx.Client) -> None:
    resp = http.get("/health")
    assert resp.status_code == 200
    assert resp.content == b""


def test_metrics_names_and_labels(http: httpx.Client, vllm_server: VllmServer) -> None:
    http.post(
        "/v1/completions",
        json={"model": vllm_server.lora_model, "prompt": "hi", "max_tokens": 2},
    )
    got = metrics(http)
    for gauge in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ):
        # One engine, labelled with the served base name, even for adapter traffic.
        assert [labels for labels, _ in got[gauge]] == [
            {"engine": "0", "model_name": vllm_server.base_model}
        ]
    for histogram in (
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ):
        assert f"{histogram}_bucket" in got
        assert f"{histogram}_count" in got
    assert "vllm:prompt_tokens_total" in got
    assert "vllm:generation_tokens_total" in got
    finished = {labels["finished_reason"] for labels, _ in got["vllm:request_success_total"]}
    assert {"stop", "length", "abort", "error"} <= finished
    lora_info = [labels for labels, _ in got["vllm:lora_requests_info"]]
    assert all(
        set(labels) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
        for labels in lora_info
    )


def test_metrics_show_running_and_waiting(http: httpx.Client, vllm_server: VllmServer) -> None:
    # Three batches' worth of clients, each sending again as soon as it is answered, until the
    # queue shows: the gauges update coarsely here (the API server answers /metrics rarely
    # while the engine has both cores), so a one-shot burst can end between two updates.
    n = vllm_server.max_num_seqs * 3
    body = {"model": vllm_server.base_model, "prompt": "hi", "max_tokens": 480, "ignore_eos": True}
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=vllm_server.base_url, timeout=120.0) as own:
            while not stop.is_set():
                try:
                    own.post("/v1/completions", json=body)
                except httpx.HTTPError:
                    time.sleep(0.1)

    def queued(sample: tuple[float, float]) -> bool:
        return sample[0] == vllm_server.max_num_seqs and sample[1] > 0

    threads = [threading.Thread(target=send, name=f"vllm-load-{i}") for i in range(n)]
    for t in threads:
        t.start()
    seen: list[tuple[float, float]] = []
    try:
        deadline = time.monotonic() + 90.0
        while not any(queued(s) for s in seen) and time.monotonic() < deadline:
            got = metrics(http)
            seen.append(
                (got["vllm:num_requests_running"][0][1], got["vllm:num_requests_waiting"][0][1])
            )
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert any(queued(s) for s in seen), sorted(set(seen))
    assert all(r <= vllm_server.max_num_seqs and r + w <= n for r, w in seen), sorted(set(seen))

    def idle() -> bool:
        got = metrics(http)
        return (
            got["vllm:num_requests_running"][0][1] == 0
            and got["vllm:num_requests_waiting"][0][1] == 0
        )

    wait_until(idle, 30, "vLLM's gauges back at zero")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_captured_fixture_shapes_still_hold(http: httpx.Client, name: str) -> None:
    # The simulator is checked against these files; a vLLM upgrade that changes a shape fails
    # here first (regenerate with `python -m tests.integration.vllm.capture`).
    saved = json.loads((FIXTURES / f"{name}.json").read_text())
    assert capture_shape(capture(http, name, SAMPLES[name])) == capture_shape(saved)
