"""The real openai SDK against a `loopgate sim` process: vLLM's routes, shapes and errors."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from sim.text import count_tokens
from tests.support.sim import SimFactory, SimServer

MESSAGES: Any = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "How should I size Kafka partitions for billing events?"},
]


@pytest.fixture(scope="module")
def shared(sim_factory_session: SimFactory) -> SimServer:
    """One simulator for the read-mostly tests here, with LoRA adapters in other styles."""
    return sim_factory_session(
        model="policy-a", lora=["policy-b=friendly", "policy-c=formal", "policy-d=verbose"]
    )


def test_chat_non_streaming_is_shaped_like_vllm(shared: SimServer) -> None:
    with shared.client() as client:
        answer = client.chat.completions.create(model="policy-a", messages=MESSAGES)
    assert answer.id.startswith("chatcmpl-")
    assert answer.object == "chat.completion"
    assert answer.model == "policy-a"
    choice = answer.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert choice.message.role == "assistant"
    content = choice.message.content or ""
    assert "kafka" in content.lower() or "partitions" in content.lower() or "billing" in content
    assert answer.usage is not None
    # Whole sentences up to output_tokens: the length lands a little under it at most.
    assert 12 <= answer.usage.completion_tokens == count_tokens(content) <= 16
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + count_tokens(content)


def test_chat_stream_with_usage_matches_the_non_streamed_answer(shared: SimServer) -> None:
    with shared.client() as client:
        whole = client.chat.completions.create(model="policy-a", messages=MESSAGES, seed=5)
        stream = client.chat.completions.create(
            model="policy-a",
            messages=MESSAGES,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    first, *middle, last_content, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert all(c.id == first.id and c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None and c.choices[0].finish_reason is None for c in middle)
    assert last_content.choices[0].finish_reason == "stop"
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert usage_chunk.usage.completion_tokens == len(middle) + 1


def test_raw_stream_ends_with_done_and_usage_null_only_when_asked(shared: SimServer) -> None:
    body = {"model": "policy-a", "messages": MESSAGES, "stream": True, "max_tokens": 2}
    status, raw = shared.call("POST", "/v1/chat/completions", body)
    assert status == 200
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all("usage" not in orjson.loads(e[6:]) for e in events[:-1])
    final = orjson.loads(events[-2][6:])["choices"][0]
    assert final["finish_reason"] == "length"
    assert final["stop_reason"] is None


def test_max_tokens_cuts_with_finish_reason_length(shared: SimServer) -> None:
    with shared.client() as client:
        chat = client.chat.completions.create(model="policy-a", messages=MESSAGES, max_tokens=3)
        newer = client.chat.completions.create(
            model="policy-a", messages=MESSAGES, max_completion_tokens=4
        )
        text = client.completions.create(model="policy-a", prompt="Tell me of tides", max_tokens=2)
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 3
    assert newer.choices[0].finish_reason == "length"
    assert newer.usage is not None
    assert newer.usage.completion_tokens == 4
    assert text.choices[0].finish_reason == "length"
    assert text.usage is not None
    assert text.usage.completion_tokens == 2


def test_completions_streaming_and_not(shared: SimServer) -> None:
    with shared.client() as client:
        whole = client.completions.create(model="policy-a", prompt="Ocean tides explained")
        stream = client.completions.create(
            model="policy-a",
            prompt="Ocean tides explained",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert whole.id.startswith("cmpl-")
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    *texts, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in texts) == whole.choices[0].text
    assert texts[-1].choices[0].finish_reason == "stop"
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == len(texts)


def test_n_choices_and_stop_strings(shared: SimServer) -> None:
    with shared.client() as client:
        many = client.chat.completions.create(model="policy-a", messages=MESSAGES, n=3)
        first = many.choices[0].message.content or ""
        word = first.split()[2]
        stopped = client.chat.completions.create(model="policy-a", messages=MESSAGES, stop=[word])
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.message.content for c in many.choices}) > 1
    assert stopped.choices[0].finish_reason == "stop"
    assert word not in (stopped.choices[0].message.content or "")


def test_styles_are_told_apart_and_seed_decides_the_answer(shared: SimServer) -> None:
    question: Any = [{"role": "user", "content": "Any advice on planning a garden irrigation?"}]
    with shared.client() as client:

        def ask(model: str, seed: int | None = None) -> str:
            answer = client.chat.completions.create(
                model=model, messages=question, max_tokens=200, seed=seed
            )
            return answer.choices[0].message.content or ""

        concise, friendly = ask("policy-a"), ask("policy-b")
        formal, verbose = ask("policy-c"), ask("policy-d")
        assert ask("policy-a", seed=1) == ask("policy-a", seed=1) != ask("policy-a", seed=2)
    assert len({concise, friendly, formal, verbose}) == 4
    assert friendly.count("!") >= 2
    assert "!" not in concise
    assert "!" not in formal
    assert "!" not in verbose
    assert formal.startswith(("Certainly", "Thank you"))
    assert verbose.startswith(("That is a wonderful question", "There is quite a lot"))
    assert len(verbose.split()) > len(concise.split())


def test_errors_are_vllms(shared: SimServer) -> None:
    with shared.client() as client:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="nope", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(model="policy-a", messages=MESSAGES, max_tokens=10**6)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="policy-a", messages=MESSAGES, n=0)
    error = missing.value.body
    assert error == {
        "message": "The model `nope` does not exist. Valid aliases: policy-a.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    assert "max_tokens=1000000 cannot be greater than max_model_len=8192." in str(too_long.value)
    status, raw = shared.call("POST", "/v1/completions", {"model": "policy-a"})
    assert status == 400
    assert orjson.loads(raw)["error"]["type"] == "BadRequestError"
    status, raw = shared.call("POST", "/v1/chat/completions", {"model": "policy-a"})
    assert status == 400
    assert orjson.loads(raw)["error"]["param"] == "body.messages"
    assert orjson.loads(raw)["error"]["type"] == "Bad Request"


def test_models_health_version_and_recorded_requests(shared: SimServer) -> None:
    shared.reset()
    with shared.client() as client:
        models = client.models.list()
        answer = client.chat.completions.create(
            model="policy-a",
            messages=MESSAGES,
            extra_headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
            extra_body={"top_k": 7, "guided_choice": ["yes", "no"]},
        )
    assert [m.id for m in models.data] == ["policy-a", "policy-b", "policy-c", "policy-d"]
    assert models.data[1].model_extra is not None
    assert models.data[1].model_extra["parent"] == "policy-a"
    assert shared.call("GET", "/health") == (200, b"")
    assert "version" in orjson.loads(shared.call("GET", "/version")[1])
    seen = shared.last_request()
    assert seen["path"] == "/v1/chat/completions"
    assert seen["method"] == "POST"
    assert seen["headers"]["traceparent"].startswith("00-aaaa")
    assert seen["body"]["top_k"] == 7
    assert seen["body"]["guided_choice"] == ["yes", "no"]
    assert seen["outcome"] == "completed"
    assert seen["response_id"].startswith("chatcmpl-")
    stats = shared.stats()
    assert (stats["received"], stats["completed"]) == (1, 1)
    assert shared.metric("vllm:request_success_total") >= 1
    assert answer.usage is not None
    generated = shared.metric("vllm:generation_tokens_total")
    assert generated == answer.usage.completion_tokens
