"""Shadow pairs in the console's feed, the shadow form, and the admin client's new calls."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from console.admin import AdminClient, AdminError
from console.app import install_console
from console.config import ConsoleConfig
from console.feed import Feed
from console.queues import MemoryQueues
from console.routes import _shadow_fields
from console.session import COOKIE, Sessions
from console.state import ConsoleState
from feedback.schema import COMPLETIONS_TOPIC, FeedbackEvent
from feedback.sinks.base import Record


def _completion(
    rid: str, variant: str, prompt: str, role: str = "primary", pair_of: str | None = None
) -> dict[str, Any]:
    return {
        "type": "completion",
        "event_id": f"e-{rid}",
        "time": "2026-12-03T07:00:00Z",
        "body": {
            "response_id": rid,
            "flag": "support-bot",
            "app": "support-app",
            "variant": variant,
            "request": {"messages": [{"role": "user", "content": prompt}]},
            "response": {"text": f"answer {rid}"},
            "safety": {},
            "status": "ok",
            "role": role,
            "pair_of": pair_of,
        },
    }


def _feed(*events: tuple[str, dict[str, Any]], max_pairs: int = 1000) -> Feed:
    """A feed that took these (record key, event) pairs."""
    feed = Feed(ConsoleConfig(queues=[], max_pairs=max_pairs), MemoryQueues(60, 100))
    for key, event in events:
        feed.listen(Record(COMPLETIONS_TOPIC, key, orjson.dumps(event)))
    asyncio.run(feed.drain())
    return feed


def test_a_shadow_pairs_with_its_own_primary_and_comes_first() -> None:
    feed = _feed(
        ("p1", _completion("p1", "control", "refunds?")),
        ("p2", _completion("p2", "canary", "refunds?")),  # same prompt, another request
        # The shadow of p1, keyed by its primary's id (one partition for the pair).
        ("p1", _completion("s1", "canary", "refunds?", "shadow", pair_of="p1")),
        ("p3", _completion("p3", "control", "hours?")),
        ("s2", _completion("s2", "canary", "hours?", "shadow", pair_of="p3")),
        # A shadow whose primary the feed never saw pairs with nothing.
        ("s3", _completion("s3", "canary", "lost?", "shadow", pair_of="gone")),
    )
    pairs = list(feed.pairs.values())
    shadows = [(p.first.response_id, p.second.response_id) for p in pairs if p.shadow]
    assert shadows == [("p1", "s1"), ("p3", "s2")]
    # Shadows never pair by prompt: the one same-prompt pair is p1 with p2.
    same = [(p.first.response_id, p.second.response_id) for p in pairs if not p.shadow]
    assert same == [("p1", "p2")]
    # Reviewers take the newest first: shadow pairs sit last, so they are offered first.
    assert pairs[-1].shadow
    assert pairs[-1].second.answer == "answer s2"
    # The shadow's record did not take the primary's place among the answers feedback uses.
    assert orjson.loads(feed.answers["p1"])["body"]["response_id"] == "p1"


def test_same_prompt_pairs_are_of_one_app() -> None:
    other_app = _completion("q2", "canary", "refunds?")
    other_app["body"]["app"] = "billing"
    feed = _feed(("q1", _completion("q1", "control", "refunds?")), ("q2", other_app))
    assert not feed.pairs  # the gateway refuses a preference across apps: none is offered
    feed = _feed(
        ("q1", _completion("q1", "control", "refunds?")),
        ("q3", _completion("q3", "canary", "refunds?")),
    )
    ((_, pair),) = feed.pairs.items()
    assert (pair.first.app, pair.second.app) == ("support-app", "support-app")


def test_pairs_beyond_the_cap_drop_same_prompt_pairs_before_shadow_pairs() -> None:
    feed = _feed(
        ("p1", _completion("p1", "control", "a?")),
        ("p2", _completion("p2", "canary", "a?")),
        ("p3", _completion("p3", "control", "b?")),
        ("s3", _completion("s3", "canary", "b?", "shadow", pair_of="p3")),
        max_pairs=1,
    )
    ((_, pair),) = feed.pairs.items()
    assert pair.shadow
    assert (pair.first.response_id, pair.second.response_id) == ("p3", "s3")


def test_shadow_form_fields() -> None:
    fields = {
        "shadow_variant": "canary",
        "shadow_share": "0.25",
        "shadow_max_in_flight": "4",
        "shadow_timeout_s": "",
        "shadow_tokens_per_minute": "",
        "shadow_stream": "on",
    }
    assert _shadow_fields(fields) == {
        "variant": "canary",
        "share": 0.25,
        "max_in_flight": 4,
        "tokens_per_minute": None,
        "stream": True,
    }
    with pytest.raises(ValueError, match="share must be a number"):
        _shadow_fields({**fields, "shadow_share": "lots"})
    with pytest.raises(ValueError, match="share of units"):
        _shadow_fields({**fields, "shadow_share": ""})
    with pytest.raises(ValueError, match="choose the variant"):
        _shadow_fields({**fields, "shadow_variant": ""})


def _client(handler: Any) -> AdminClient:
    # A fake transport: the gateway's answers are what is under test here, not the gateway.
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://gateway")
    return AdminClient(http)


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "x"}})


def test_record_feedback_posts_the_preference_with_the_reviewers_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "feedback", **orjson.loads(request.content)})

    wire = {"response_id": "a", "other_response_id": "b", "kind": "preference", "winner": "tie"}
    recorded = asyncio.run(_client(handler).record_feedback("tok", wire))
    assert recorded is not None
    assert recorded["winner"] == "tie"
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/admin/feedback")
    assert request.headers["Authorization"] == "Bearer tok"
    assert orjson.loads(request.content) == wire


def test_record_feedback_is_none_only_where_the_gateway_lacks_the_route() -> None:
    missing = _client(lambda r: _error(404, "Not Found"))  # FastAPI's answer for no route
    assert asyncio.run(missing.record_feedback("tok", {})) is None
    unknown = _client(lambda r: _error(404, "no answer with response id 'a'"))
    with pytest.raises(AdminError) as refused:
        asyncio.run(unknown.record_feedback("tok", {}))
    assert refused.value.status == 404
    forbidden = _client(lambda r: _error(403, "vera has role viewer; this needs reviewer"))
    with pytest.raises(AdminError, match="needs reviewer"):
        asyncio.run(forbidden.record_feedback("tok", {}))


def test_update_flag_puts_the_flag_with_the_reason() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "flag", "key": "support-bot", "version": 3})

    body = {"key": "support-bot", "version": 2, "shadow": None}
    got = asyncio.run(_client(handler).update_flag("tok", "support-bot", body, "try it"))
    assert got["version"] == 3
    (request,) = seen
    assert (request.method, request.url.path) == ("PUT", "/admin/flags/support-bot")
    assert request.headers["X-Loopgate-Reason"] == "try it"
    assert orjson.loads(request.content) == body


def _console(gateway: Any, feed: Feed, emitted: list[FeedbackEvent]) -> tuple[FastAPI, str, str]:
    """The console's routes in process against a fake admin API; a reviewer's cookie, CSRF."""
    app = FastAPI()
    install_console(app)
    sessions = Sessions(b"k" * 32, 3600)
    app.state.console = ConsoleState(
        config=feed.config,
        sessions=sessions,
        admin=_client(gateway),
        queues=feed.queues,
        feed=feed,
        emit=emitted.append,
        instance="test",
    )
    session, cookie = sessions.new("rui", "reviewer", "rui-token", time.time())
    return app, cookie, session.csrf


def _judge(app: FastAPI, cookie: str, csrf: str) -> tuple[dict[str, str], httpx.Response]:
    """Open side by side, press B; the form shown and the answer to the POST."""

    async def main() -> tuple[dict[str, str], httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://console", cookies={COOKIE: cookie}
        ) as http:
            page = await http.get("/console/compare")
            assert page.status_code == 200
            assert "Shadow pair" in page.text
            shown = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
            answer = await http.post(
                "/console/compare", data={**shown, "csrf": csrf, "winner": "b"}
            )
            return shown, answer

    return asyncio.run(main())


def _shadow_feed() -> Feed:
    return _feed(
        ("p1", _completion("p1", "control", "refunds?")),
        ("s1", _completion("s1", "canary", "refunds?", "shadow", pair_of="p1")),
    )


def test_a_shadow_pair_choice_goes_to_the_gateways_admin_feedback() -> None:
    posted: list[dict[str, Any]] = []

    def gateway(request: httpx.Request) -> httpx.Response:  # a fake admin API
        assert (request.method, request.url.path) == ("POST", "/admin/feedback")
        assert request.headers["Authorization"] == "Bearer rui-token"
        posted.append(orjson.loads(request.content))
        return httpx.Response(200, json={"object": "feedback", **posted[-1]})

    emitted: list[FeedbackEvent] = []
    app, cookie, csrf = _console(gateway, _shadow_feed(), emitted)
    shown, answer = _judge(app, cookie, csrf)
    assert {shown["response_a"], shown["response_b"]} == {"p1", "s1"}
    assert answer.status_code == 303
    assert "preference%20saved" in answer.headers["location"]
    (body,) = posted
    assert body == {
        "response_id": shown["response_a"],
        "other_response_id": shown["response_b"],
        "kind": "preference",
        "winner": "b",
        "source": "reviewer",
        "reviewer": "rui",
        "queue": "side_by_side",
        "time_spent_ms": body["time_spent_ms"],
    }
    assert body["time_spent_ms"] >= 0
    assert emitted == []  # the gateway recorded it: the console wrote nothing itself


def test_without_admin_feedback_the_console_records_the_preference_itself() -> None:
    emitted: list[FeedbackEvent] = []
    missing = _error(404, "Not Found")  # a gateway from before /admin/feedback
    app, cookie, csrf = _console(lambda r: missing, _shadow_feed(), emitted)
    shown, answer = _judge(app, cookie, csrf)
    assert "has%20no%20/admin/feedback" in answer.headers["location"]
    (event,) = emitted
    body = event.body
    assert (body.kind, body.winner, body.source, body.reviewer) == (
        "preference",
        "b",
        "reviewer",
        "rui",
    )
    assert (body.response_id, body.other_response_id) == (shown["response_a"], shown["response_b"])
    assert (body.variant, body.other_variant) == (shown["variant_a"], shown["variant_b"])
    assert {body.variant, body.other_variant} == {"control", "canary"}


def test_a_refused_preference_is_shown_and_not_recorded_elsewhere() -> None:
    emitted: list[FeedbackEvent] = []
    gone = _error(422, "response_id: the answer is older than feedback.max_age_s")
    app, cookie, csrf = _console(lambda r: gone, _shadow_feed(), emitted)
    _, answer = _judge(app, cookie, csrf)
    assert "error=not%20recorded" in answer.headers["location"]
    assert "older%20than" in answer.headers["location"]
    assert emitted == []
