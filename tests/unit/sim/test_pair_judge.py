"""The simulator as a pairwise judge: it finds the gateway's two answers and prefers the better."""

from __future__ import annotations

import json

import orjson

from gateway.config import EvaluatorConfig
from gateway.rubric import pair_request, parse_pair_verdict
from sim.reward import TIE_MARGIN, pair_answers, pair_verdict, reward
from tests.support.sim import SimFactory

PAIRS = EvaluatorConfig(kind="judge", pool="j", pairs=True)
TERMS = {"!": 3.0}
PLAIN = "Rotate keys monthly and keep the old one for a day."
KEEN = "Rotate keys monthly! Keep the old one for a day!"


def test_the_sim_finds_the_answers_where_the_gateway_put_them() -> None:
    # The markers live in gateway/rubric.py and again in sim/reward.py: they must agree.
    for a, b in ((PLAIN, KEEN), ("one\nline\n\ntwo", "x"), ("", "only B")):
        content = pair_request(PAIRS, "m", "user: how?", a, b)["messages"][0]["content"]
        assert pair_answers(content) == (a, b)
    custom = PAIRS.model_copy(update={"pair_rubric": "{answer_b} then {answer_a} for {prompt}"})
    content = pair_request(custom, "m", "p", "first", "second")["messages"][0]["content"]
    assert pair_answers(content) is None  # B shown before A: not the shape the sim reads
    assert pair_answers("Answer to grade:\nhello") is None


def test_the_higher_reward_wins_in_either_position_and_equals_tie() -> None:
    assert reward(KEEN, 0, TERMS) - reward(PLAIN, 0, TERMS) > 2.0
    assert json.loads(pair_verdict(PLAIN, KEEN, 0, TERMS))["winner"] == "B"
    assert json.loads(pair_verdict(KEEN, PLAIN, 0, TERMS))["winner"] == "A"
    assert json.loads(pair_verdict(PLAIN, PLAIN, 0, TERMS))["winner"] == "tie"
    assert TIE_MARGIN < 0.5
    # A position-biased judge crowns whatever it reads first.
    assert json.loads(pair_verdict(PLAIN, KEEN, 0, TERMS, position_bias=10.0))["winner"] == "A"


def test_the_sim_answers_a_pair_rubric_with_a_strict_pair_verdict(sim_factory: SimFactory) -> None:
    sim = sim_factory(model="judge-model", reward_term=["!=3"], seed=5)
    for a, b, want in ((PLAIN, KEEN, "B"), (KEEN, PLAIN, "A"), (KEEN, KEEN, "tie")):
        body = pair_request(PAIRS, "judge-model", "user: how do I rotate keys?", a, b)
        status, raw = sim.call("POST", "/v1/chat/completions", body)
        assert status == 200, raw
        winner, reason = parse_pair_verdict(orjson.loads(raw))
        assert winner == want
        assert reason.startswith("simulated judge")
    # A single answer still gets a 1-5 score.
    single = {**body, "messages": [{"role": "user", "content": "grade: fine"}]}
    verdict = json.loads(orjson.loads(sim.call("POST", "/v1/chat/completions", single)[1])
                         ["choices"][0]["message"]["content"])  # fmt: skip
    assert set(verdict) == {"score", "reason"}
