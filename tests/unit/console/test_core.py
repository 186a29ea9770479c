"""The console's pure parts: sessions, CSRF, previews, agreement, win rates, selection."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from console.config import ConsoleConfig, QueueConfig
from console.feed import Feed, signals_of
from console.queues import MemoryQueues
from console.session import Sessions, csrf_ok
from console.stats import cohen_kappa, exact_moves, preview_weights, wilson, win_rates
from feedback.schema import COMPLETIONS_TOPIC, FEEDBACK_TOPIC
from feedback.sinks.base import Record
from router.model import parse_flag


def test_session_round_trip_is_sealed_and_expires() -> None:
    sessions = Sessions(b"secret", ttl_s=60)
    session, cookie = sessions.new("ana", "reviewer", "tok-123", now=1000.0)
    assert "tok-123" not in cookie
    assert "ana" not in cookie
    opened = sessions.open(cookie, now=1030.0)
    assert opened == session
    assert opened is not None
    assert opened.allows("viewer")
    assert not opened.allows("flag_editor")
    assert sessions.open(cookie, now=1061.0) is None  # expired
    assert Sessions(b"other", 60).open(cookie, now=1030.0) is None  # another key
    tampered = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    assert sessions.open(tampered, now=1030.0) is None
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None)
    assert not csrf_ok(session, session.csrf + "x")


def _flag() -> object:
    return parse_flag(
        {
            "key": "f",
            "control": "a",
            "variants": [
                {"name": "a", "pool": "p", "weight": 90},
                {"name": "b", "pool": "p", "weight": 10},
                {"name": "c", "pool": "p", "weight": 0},
            ],
        }
    )


def test_weight_preview_moves_units_only_into_the_variant_that_gains() -> None:
    flag = _flag()
    moves = preview_weights(flag, {"a": 60, "b": 40}, units=5000)  # type: ignore[arg-type]
    assert [(m.source, m.target) for m in moves] == [("a", "b")]
    assert moves[0].share == pytest.approx(0.30, abs=0.03)
    assert preview_weights(flag, {"a": 90}, units=1000) == []  # type: ignore[arg-type]


def test_cohen_kappa_known_values() -> None:
    assert cohen_kappa([]) is None
    assert cohen_kappa([("g", "g"), ("b", "b")]) == 1.0
    assert cohen_kappa([("g", "b"), ("b", "g")]) == -1.0
    # 20 items: 15 agree; marginals 10/10 and 10/10 -> p_e = 0.5 -> kappa 0.5
    pairs = [("g", "g")] * 8 + [("b", "b")] * 7 + [("g", "b")] * 2 + [("b", "g")] * 3
    assert cohen_kappa(pairs) == pytest.approx((0.75 - 0.5) / 0.5)


def test_win_rates_pool_both_orders_with_wilson_intervals() -> None:
    choices = [("canary", "control", "a")] * 6 + [("control", "canary", "a")] * 2
    choices += [("control", "canary", "tie"), ("canary", "control", "both_bad")]
    (rate,) = win_rates(choices)
    assert (rate.first, rate.second) == ("canary", "control")
    assert (rate.wins, rate.losses, rate.ties, rate.both_bad) == (6, 2, 1, 1)
    assert rate.rate == pytest.approx(6.5 / 9)
    assert (rate.low, rate.high) == pytest.approx(wilson(6.5, 9))
    assert rate.low < rate.rate < rate.high


def _completion(rid: str, variant: str, prompt: str, safety: dict[str, int] | None = None) -> dict:
    return {
        "type": "completion",
        "event_id": f"e-{rid}",
        "time": "2026-12-02T17:00:00Z",
        "body": {
            "response_id": rid,
            "flag": "support-bot",
            "variant": variant,
            "request": {"messages": [{"role": "user", "content": prompt}]},
            "response": {"text": f"answer {rid}"},
            "safety": safety or {},
            "status": "ok",
        },
    }


def test_selection_signals() -> None:
    reports = QueueConfig(name="reports", signals=["report", "safety", "thumbs_down_edit"])
    assert signals_of(_completion("r1", "a", "hi", {"email": 1}), reports) == [
        "safety findings: email"
    ]
    edit = {"type": "feedback", "body": {"kind": "thumbs_down", "edited_text": "better"}}
    assert signals_of(edit, reports) == ["thumbs_down with an edit"]
    plain_down = {"type": "feedback", "body": {"kind": "thumbs_down"}}
    assert signals_of(plain_down, reports) == []
    # Reviewer labels never select themselves back into a queue.
    reviewer = {"type": "feedback", "body": {"kind": "report", "source": "reviewer"}}
    assert signals_of(reviewer, reports) == []
    low = QueueConfig(name="low", signals=["low_score"], score_below=0.4)
    scored = {"type": "evaluation", "body": {"score": 0.2, "evaluator": "judge-v1"}}
    assert signals_of(scored, low) == ["low score 0.20 from judge-v1"]
    audit = QueueConfig(name="audit", signals=["audit_sample"], sample_rate=0.5)
    assert signals_of(_completion("r2", "b", "hi"), audit, sampled=True) == [
        "audit sample (50% of b)"
    ]
    assert signals_of(_completion("r2", "b", "hi"), audit, sampled=False) == []


def _record(event: dict) -> Record:
    topic = COMPLETIONS_TOPIC if event["type"] == "completion" else FEEDBACK_TOPIC
    return Record(topic, event["body"]["response_id"], orjson.dumps(event))


def test_feed_pairs_same_prompt_from_two_variants_and_selects_reports() -> None:
    config = ConsoleConfig(queues=[QueueConfig(name="reports", signals=["report", "safety"])])
    queues = MemoryQueues(60, 100)
    feed = Feed(config, queues)

    async def main() -> None:
        for event in (
            _completion("r1", "control", "refunds?"),
            _completion("r2", "control", "refunds?"),
        ):
            feed.listen(_record(event))
        await feed.drain()
        assert not feed.pairs  # same variant: no pair
        feed.listen(_record(_completion("r3", "canary", "refunds?")))
        feed.listen(_record(_completion("r4", "canary", "call 555", {"phone": 1})))
        report = {"type": "feedback", "event_id": "f1",
                  "body": {"response_id": "r3", "kind": "report", "category": "wrong",
                           "flag": "support-bot", "variant": "canary"}}  # fmt: skip
        feed.listen(_record(report))
        await feed.drain()
        unsafe = await queues.claim("reports", "ana", 0.0)
        assert unsafe is not None
        assert (unsafe.item["response_id"], unsafe.item["signals"]) == (
            "r4", ["safety findings: phone"]
        )  # fmt: skip
        reported = await queues.claim("reports", "ben", 0.0)
        assert reported is not None
        assert reported.item["answer"] == "answer r3"
        assert reported.item["prompt"] == "user: refunds?"
        assert reported.item["signals"] == ["reported: wrong"]
        assert await queues.claim("reports", "cy", 0.0) is None  # nothing else selected

    asyncio.run(main())
    ((_, pair),) = feed.pairs.items()
    assert {pair.first.response_id, pair.second.response_id} == {"r2", "r3"}
    canary = feed.events(None, "canary", "completion", 10)
    assert [e["body"]["response_id"] for e in canary] == ["r4", "r3"]  # newest first
    assert len(list(feed.events("support-bot", None, None, 2))) == 2


def test_exact_moves_agree_with_bucketing_sample_units() -> None:
    flag = _flag()  # a 90, b 10, c 0
    cases = [{"a": 60, "b": 40}, {"c": 20}, {"a": 30}, {"a": 45, "b": 5}]
    for weights in cases:
        exact = exact_moves(flag, weights)  # type: ignore[arg-type]
        sampled = preview_weights(flag, weights, units=8000)  # type: ignore[arg-type]
        assert exact is not None, weights
        assert [(m.source, m.target) for m in exact] == [(m.source, m.target) for m in sampled]
        for e, s in zip(exact, sampled, strict=True):
            assert e.share == pytest.approx(s.share, abs=0.02), weights
    # {"c": 20}: c rises, everyone else gives up a share; {"a": 45, "b": 5}: nobody moves.
    assert [(m.source, m.target) for m in exact_moves(flag, {"c": 20}) or []] == [  # type: ignore[arg-type]
        ("a", "c"),
        ("b", "c"),
    ]
    assert exact_moves(flag, {"a": 45, "b": 5}) == []  # type: ignore[arg-type]
    # Several change relative to each other: units also move between them.
    four = parse_flag(
        {"key": "g", "control": "a", "variants": [
            {"name": n, "pool": "p", "weight": 25} for n in "abcd"]}
    )  # fmt: skip
    assert exact_moves(four, {"a": 40, "b": 40, "c": 10, "d": 10}) is None


def test_v1_feedback_refuses_a_preference_without_its_pair() -> None:
    from pydantic import ValidationError

    from gateway.routes.feedback import FeedbackIn

    with pytest.raises(ValidationError, match="needs other_response_id"):
        FeedbackIn(response_id="lg1.a.b", kind="preference")
