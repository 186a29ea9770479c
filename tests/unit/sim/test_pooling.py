"""The simulator's /pooling route as a reward model: vLLM's shape, seeded scores, terms."""

from __future__ import annotations

import math

import orjson

from sim.reward import reward
from tests.support.sim import SimFactory

ANSWER = [
    {"role": "user", "content": "How do I rotate keys?"},
    {"role": "assistant", "content": "Great question! Rotate them monthly!"},
]


def test_pooling_returns_one_raw_reward_in_vllms_shape(sim_factory: SimFactory) -> None:
    sim = sim_factory(model="rm", reward_term=["!=0.5"], seed=3)
    request = {"model": "rm", "messages": ANSWER, "task": "classify", "use_activation": False}
    status, raw = sim.call("POST", "/pooling", request)
    assert status == 200, raw
    body = orjson.loads(raw)
    assert body["object"] == "list"
    assert body["id"].startswith("pooling-")
    assert body["model"] == "rm"
    assert [d["index"] for d in body["data"]] == [0]
    assert body["data"][0]["object"] == "pooling"
    text = "How do I rotate keys?\nGreat question! Rotate them monthly!"
    expected = reward(text, 3, {"!": 0.5})
    assert body["data"][0]["data"] == [expected]
    assert 0.0 <= expected <= 2.0  # two "!" add 1.0 to noise in [-1, 1]
    assert body["usage"]["prompt_tokens"] > 0
    # The same text scores the same; the default activation is vLLM's one-label sigmoid.
    again = orjson.loads(sim.call("POST", "/pooling", {**request, "use_activation": None})[1])
    assert again["data"][0]["data"] == [1.0 / (1.0 + math.exp(-expected))]


def test_pooling_batches_inputs_and_rejects_what_vllm_rejects(sim_factory: SimFactory) -> None:
    sim = sim_factory(model="rm")
    status, raw = sim.call("POST", "/pooling", {"input": ["a", "b", "c"], "use_activation": False})
    assert status == 200
    scores = [d["data"][0] for d in orjson.loads(raw)["data"]]
    assert scores == [reward(t, 0, {}) for t in "abc"]
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert sim.call("POST", "/pooling", {"model": "other", "input": "a"})[0] == 404
    assert sim.call("POST", "/pooling", {"input": "a", "task": "embed"})[0] == 400
    status, raw = sim.call("POST", "/pooling", {"model": "rm"})
    assert status == 400
    assert orjson.loads(raw)["error"]["code"] == 400


def test_reward_terms_make_one_style_score_better() -> None:
    terms = {"!": 0.5}
    friendly = [reward(f"Great question! Answer {i}!", 0, terms) for i in range(200)]
    formal = [reward(f"Certainly. Answer {i}.", 0, terms) for i in range(200)]
    assert sum(friendly) / 200 - sum(formal) / 200 > 0.8
