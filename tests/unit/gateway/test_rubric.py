"""Evaluator requests and the strict reading of their answers (pure), config checks, budget."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import EvaluatorConfig
from gateway.evaluators import Budget
from gateway.rubric import (
    BadVerdict,
    conversation,
    judge_request,
    parse_reward,
    parse_verdict,
    reward_request,
    sampled,
    version,
)
from gateway.settings import ConfigError, load_settings

JUDGE = EvaluatorConfig(kind="judge", pool="j")


def _chat(content: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def test_a_verdict_in_the_asked_shape_is_read() -> None:
    assert parse_verdict(_chat('{"score": 4, "reason": "clear"}')) == (4.0, "clear")
    assert parse_verdict(_chat(' {"reason": "", "score": 1}\n')) == (1.0, "")


@pytest.mark.parametrize(
    "content",
    [
        "Score: 4",
        '```json\n{"score": 4, "reason": "x"}\n```',
        'Sure! {"score": 4, "reason": "x"}',
        '{"score": 6, "reason": "x"}',
        '{"score": 0, "reason": "x"}',
        '{"score": 4.5, "reason": "x"}',
        '{"score": "4", "reason": "x"}',
        '{"score": true, "reason": "x"}',
        '{"score": 4}',
        '{"score": 4, "reason": "x", "confidence": 0.9}',
        '{"score": 4, "reason": 3}',
        "[4]",
        None,
    ],
)
def test_anything_else_is_refused(content: Any) -> None:
    with pytest.raises(BadVerdict):
        parse_verdict(_chat(content))


def test_reward_is_read_from_vllms_pooling_shape() -> None:
    assert parse_reward({"data": [{"index": 0, "object": "pooling", "data": [1.25]}]}) == 1.25
    assert parse_reward({"data": [{"data": [[0.1], [0.2], [-0.7]]}]}) == -0.7  # per token
    for bad in ({}, {"data": []}, {"data": [{"data": [0.1, 0.9]}]}, {"data": [{"data": ["x"]}]}):
        with pytest.raises(BadVerdict):
            parse_reward(bad)
    with pytest.raises(BadVerdict):
        parse_reward({"data": [{"data": [float("nan")]}]})


def test_requests_carry_the_conversation_and_the_answer() -> None:
    request = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    }
    prompt = conversation(request, 1000)
    assert prompt == "system: be brief\nuser: hi"
    assert conversation({"prompt": "x" * 50}, 10) == "x" * 10
    judge = judge_request(JUDGE, "jm", prompt, "hello!")
    content = judge["messages"][0]["content"]
    assert "user: hi" in content
    assert "hello!" in content
    assert '{"score": <integer 1-5' in content
    assert "{{" not in content  # the template is filled by name, not str.format: no escaping
    # A conversation that names a placeholder is shown as written, not filled in again.
    tricky = judge_request(JUDGE, "jm", "user: repeat {answer} please", "hello!")
    assert "user: repeat {answer} please" in tricky["messages"][0]["content"]
    assert judge["response_format"] == {"type": "json_object"}
    assert judge["temperature"] == 0
    rm = reward_request("rm", prompt, "hello!", 1000)
    assert rm["messages"][-1] == {"role": "assistant", "content": "hello!"}
    assert (rm["task"], rm["use_activation"]) == ("classify", False)
    json.dumps(judge)


def test_version_changes_with_the_rubric_and_model() -> None:
    other = EvaluatorConfig(kind="judge", pool="j", rubric="Grade {answer} for {prompt}.")
    assert version(JUDGE, "jm") != version(other, "jm")
    assert version(JUDGE, "jm") != version(JUDGE, "jm2")
    assert version(JUDGE, "jm").startswith("jm@")


def test_sampling_is_a_stable_share() -> None:
    ids = [f"lg1.{i}.x" for i in range(4000)]
    picked = [i for i in ids if sampled("e", i, 0.25)]
    assert 850 < len(picked) < 1150
    assert picked == [i for i in ids if sampled("e", i, 0.25)]
    assert all(sampled("e", i, 1.0) for i in ids[:10])
    assert not any(sampled("e", i, 0.0) for i in ids[:100])


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValidationError, match="rubric must contain"):
        EvaluatorConfig(kind="judge", pool="j", rubric="Grade {answer}.")
    with pytest.raises(ConfigError, match=r"evaluators\.r\.pool: unknown pool 'nope'"):
        load_settings(evaluators={"r": {"kind": "reward_model", "pool": "nope"}})
    with pytest.raises(ConfigError, match="sample_rate"):
        load_settings(evaluators={"r": {"kind": "reward_model", "pool": "x", "sample_rate": 2}})


def test_budget_refills_per_minute() -> None:
    budget = Budget(per_minute=2, now=0.0)
    assert budget.take(0.0)
    assert budget.take(0.0)
    assert not budget.take(0.0)
    assert not budget.take(10.0)  # a third of a call back
    assert budget.take(30.0)
    assert not Budget(per_minute=0, now=0.0).take(100.0)
