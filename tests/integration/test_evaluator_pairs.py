"""The judge compares shadow pairs: an in-process gateway, a real `loopgate sim` judge.

The gateway does not send shadow calls on this branch yet, so each test hands the evaluators
the two finished exchanges a shadowed request makes (the primary, `shadowed`; its shadow,
`role: shadow` and `pair_of` the primary's signed id, minted with the pair claim), exactly as
the recorder's `finished` does, and reads what was recorded from the spool and /metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from fastapi import FastAPI

from feedback.schema import SCHEMA_DIR
from gateway.config import EvaluatorConfig
from gateway.evaluators import Evaluators
from gateway.exchange import Exchange
from gateway.ids import Claims, new_nonce
from gateway.rubric import pair_version
from gateway.settings import Settings
from sim.reward import pair_answers
from tests.support.events import spooled_events
from tests.support.sim import SimServer
from tests.unit.observability.live import KEY, running

FEEDBACK_SCHEMA = orjson.loads((SCHEMA_DIR / "feedback.json").read_bytes())
MESSAGES = [{"role": "user", "content": "How do I rotate API keys safely?"}]
PLAIN = "Rotate keys monthly and keep the old one valid for a day."
KEEN = "Rotate keys monthly! Keep the old one valid for a day!"
LOUD = "Use a vault! It rotates them for you!"
QUIET = "Use a vault."


def _settings(tmp_path: Path, judge_url: str, policy_url: str, **judge: Any) -> Settings:
    arbiter = {"kind": "judge", "pool": "judge", "pairs": True, "roles": [], "sample_rate": 1.0}
    return Settings(
        instance="pairs-test",
        pools={
            "policy": {"endpoints": [policy_url], "served_model": "policy-a"},
            "judge": {"endpoints": [judge_url], "served_model": "judge-model"},
        },
        models={"assistant": {"pool": "policy"}},
        events={"spool": {"dir": str(tmp_path / "spool")}},
        ids={"keys": [KEY]},
        evaluators={"arbiter": {**arbiter, **judge}},
    )


def _pair(app: FastAPI, primary_text: str, shadow_text: str) -> tuple[Exchange, Exchange]:
    """The two exchanges of one shadowed request on flag `bot` (a: control, b: candidate)."""
    signer = app.state.runtime.signer
    now = time.time()
    unit = signer.unit_hash("user-7")
    claims = Claims(
        flag="bot", variant="a", flag_version=3, app="app-1", unit=unit, time=int(now),
        nonce=new_nonce(),
    )  # fmt: skip
    shadow_claims = dataclasses.replace(claims, variant="b", nonce=new_nonce(), pair=claims.nonce)
    common: dict[str, Any] = {
        "kind": "chat", "started_at": now, "flag": "bot", "flag_version": 3, "app_id": "app-1",
        "unit_hash": unit, "reason": "split",
    }  # fmt: skip
    primary = Exchange(
        request_id="r1", variant="a", request={"model": "bot", "messages": MESSAGES},
        response_id=signer.sign(claims), text_parts=[primary_text], shadowed=True, **common,
    )  # fmt: skip
    shadow = Exchange(
        request_id="r2", variant="b", request={"model": "policy-b", "messages": MESSAGES},
        response_id=signer.sign(shadow_claims), text_parts=[shadow_text], role="shadow",
        pair_of=primary.response_id, **common,
    )  # fmt: skip
    return primary, shadow


def _outcome(evaluators: Evaluators, label: str, outcome: str, reason: str = "") -> float:
    value: float = evaluators.metrics.outcomes.labels(label, outcome, reason)._value.get()
    return value


async def _until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(20):
        while not check():  # noqa: ASYNC110 - counters, not events
            await asyncio.sleep(0.02)


def _preferences(tmp_path: Path) -> list[dict[str, Any]]:
    return [
        e for e in spooled_events(tmp_path / "spool")
        if e["type"] == "feedback" and e["body"]["kind"] == "preference"
    ]  # fmt: skip


def test_a_finished_pair_is_judged_in_both_orders_into_one_preference(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    judge = sim_factory(model="judge-model", reward_term=["!=3"], seed=11)
    policy = sim_factory(model="policy-a")
    settings = _settings(tmp_path, judge.base_url, policy.base_url, pair_wait_s=1.0)
    pairs: list[tuple[Exchange, Exchange]] = []

    async def go() -> str:
        async with running(settings) as (app, client):
            evaluators: Evaluators = app.state.runtime.evaluators
            pairs.extend([_pair(app, PLAIN, KEEN), _pair(app, LOUD, QUIET), _pair(app, KEEN, KEEN)])
            # Either half may finish first.
            for i, (primary, shadow) in enumerate(pairs):
                first, second = (shadow, primary) if i % 2 else (primary, shadow)
                evaluators.finished(first)
                evaluators.finished(second)
            await _until(lambda: _outcome(evaluators, "arbiter:pairs", "done") == 3, "3 pairs")
            # A request that was not shadowed is no half: nothing waits for it, nothing scores it.
            answer = await client.post(
                "/v1/chat/completions", json={"model": "assistant", "messages": MESSAGES}
            )
            assert answer.status_code == 200
            # A primary whose shadow never finishes waits pair_wait_s, then is counted dropped
            # when the next half arrives.
            lonely, _ = _pair(app, PLAIN, KEEN)
            evaluators.finished(lonely)
            await asyncio.sleep(1.1)
            late, never_judged = _pair(app, PLAIN, KEEN)
            evaluators.finished(dataclasses.replace(never_judged, status="error"))
            assert _outcome(evaluators, "arbiter:pairs", "dropped", "pair_expired") == 1
            evaluators.finished(late)  # its shadow failed: let go, not judged, not waiting
            (scorer,) = evaluators.pair_scorers
            assert scorer.book is not None
            assert len(scorer.book) == 0
            assert _outcome(evaluators, "arbiter:pairs", "done") == 3
            assert _outcome(evaluators, "arbiter", "done") == 0  # roles []: no single scores
            latency = evaluators.metrics.latency.labels("arbiter:pairs")
            assert sum(b.get() for b in latency._buckets) == 3
            metrics = (await client.get("/metrics")).text
            return metrics

    metrics = asyncio.run(go())
    assert 'loopgate_feedback_total{flag="bot",kind="preference",variant="a"} 3.0' in metrics

    # Each pair went to the judge twice: the primary shown first, then the shadow first.
    shown = [pair_answers(e["body"]["messages"][0]["content"]) for e in judge.requests()]
    assert len(shown) == 6
    for primary, shadow in pairs[:2]:
        assert shown.count((primary.text, shadow.text)) == 1
        assert shown.count((shadow.text, primary.text)) == 1
        assert shown.index((primary.text, shadow.text)) < shown.index((shadow.text, primary.text))
    assert shown.count((KEEN, KEEN)) == 2
    assert all(e["body"]["temperature"] == 0 for e in judge.requests())

    prefs = _preferences(tmp_path)
    assert len(prefs) == 3
    by_primary = {e["body"]["response_id"]: e["body"] for e in prefs}
    version = pair_version(EvaluatorConfig(kind="judge", pool="judge", pairs=True), "judge-model")
    for (primary, shadow), winner in zip(pairs, ["b", "a", "tie"], strict=True):
        body = by_primary[primary.response_id]
        assert body["winner"] == winner
        assert body["other_response_id"] == shadow.response_id
        assert (body["source"], body["reviewer"]) == ("judge", "arbiter")
        assert (body["flag"], body["flag_version"], body["app"]) == ("bot", 3, "app-1")
        assert (body["variant"], body["other_variant"]) == ("a", "b")
        assert body["unit_hash"] == primary.unit_hash
        # This judge has no position bias: both orders named the same answer.
        assert body["metadata"]["primary_first"] == body["metadata"]["shadow_first"] == winner
        assert body["metadata"]["judge_version"] == version
        assert body["comment"].startswith("primary first: simulated judge")
        assert body["time_spent_ms"] >= 0
    for event in prefs:
        event["body"].pop("sealed", None)
        jsonschema.validate(event, FEEDBACK_SCHEMA)
    # Nothing else was recorded as an evaluation.
    assert not [e for e in spooled_events(tmp_path / "spool") if e["type"] == "evaluation"]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_judge_loses_pairs_counted_and_records_nothing(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    policy = sim_factory(model="policy-a")
    dead = f"http://127.0.0.1:{_dead_port()}"
    settings = _settings(tmp_path, dead, policy.base_url, timeout_s=0.5, per_minute=4)

    async def go() -> Evaluators:
        async with running(settings) as (app, _):
            evaluators: Evaluators = app.state.runtime.evaluators
            for _ in range(3):
                for half in _pair(app, PLAIN, KEEN):
                    evaluators.finished(half)

            def settled() -> bool:
                failed = _outcome(evaluators, "arbiter:pairs", "failed", "unavailable")
                budget = _outcome(evaluators, "arbiter:pairs", "dropped", "budget")
                return failed + budget == 3

            await _until(settled, "3 pairs accounted for")
            # Four calls a minute is two pairs: the third is over budget, not half judged.
            assert _outcome(evaluators, "arbiter:pairs", "dropped", "budget") >= 1
            assert _outcome(evaluators, "arbiter:pairs", "done") == 0
            # A half still waiting at shutdown will not see its other half now.
            evaluators.finished(_pair(app, PLAIN, KEEN)[1])
        return evaluators

    evaluators = asyncio.run(go())
    assert _outcome(evaluators, "arbiter:pairs", "dropped", "shutdown") == 1
    assert _preferences(tmp_path) == []


def test_a_judge_that_favours_the_first_answer_gives_ties_not_wins(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    # The candidate is better (+6 reward), but the judge adds 10 to whatever it reads first:
    # each order alone would crown the answer shown first.
    judge = sim_factory(model="judge-model", reward_term=["!=3"], judge_position_bias=10.0, seed=11)
    policy = sim_factory(model="policy-a")
    settings = _settings(tmp_path, judge.base_url, policy.base_url)

    async def go() -> None:
        async with running(settings) as (app, _):
            evaluators: Evaluators = app.state.runtime.evaluators
            for primary_text, shadow_text in ((PLAIN, KEEN), (LOUD, QUIET), (QUIET, PLAIN)):
                for half in _pair(app, primary_text, shadow_text):
                    evaluators.finished(half)
            await _until(lambda: _outcome(evaluators, "arbiter:pairs", "done") == 3, "3 pairs")

    asyncio.run(go())
    prefs = [e["body"] for e in _preferences(tmp_path)]
    assert [p["winner"] for p in prefs] == ["tie", "tie", "tie"]
    # Each order named the answer it showed first: a for primary-first, b for shadow-first.
    assert {(p["metadata"]["primary_first"], p["metadata"]["shadow_first"]) for p in prefs} == {
        ("a", "b")
    }


def test_roles_shadow_scores_shadow_answers_alone_marked_as_shadow(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    judge = sim_factory(model="judge-model")
    policy = sim_factory(model="policy-a")
    settings = _settings(tmp_path, judge.base_url, policy.base_url, pairs=False, roles=["shadow"])

    async def go() -> Exchange:
        async with running(settings) as (app, _):
            evaluators: Evaluators = app.state.runtime.evaluators
            primary, shadow = _pair(app, PLAIN, KEEN)
            evaluators.finished(primary)
            evaluators.finished(shadow)
            await _until(lambda: _outcome(evaluators, "arbiter", "done") == 1, "1 score")
            assert evaluators.pair_scorers == []
            return shadow

    shadow = asyncio.run(go())
    events = spooled_events(tmp_path / "spool")
    (scored,) = [e["body"] for e in events if e["type"] == "evaluation"]
    assert (scored["response_id"], scored["role"], scored["variant"]) == (
        shadow.response_id, "shadow", "b",
    )  # fmt: skip
    assert _preferences(tmp_path) == []
