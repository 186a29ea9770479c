"""The shadow runner's pure parts: the per-flag in-flight cap and token budget, the body."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import PoolConfig
from gateway.resolver import ShadowRoute
from gateway.shadow import ShadowBudget, shadow_body
from gateway.upstream import Pool
from router.model import Shadow


def budget(now: float = 0.0, **config: Any) -> ShadowBudget:
    return ShadowBudget(Shadow(variant="candidate", share=1.0, **config), now)


def test_the_in_flight_cap_drops_at_once_and_a_release_frees_a_slot() -> None:
    b = budget(max_in_flight=2)
    assert b.admit(10, 0.0) is None
    assert b.admit(10, 0.0) is None
    assert b.admit(10, 0.0) == "in_flight"  # never waits: the answer is immediate
    assert b.in_flight == 2
    b.release()
    assert b.admit(10, 0.0) is None
    assert b.admit(10, 0.0) == "in_flight"


def test_without_a_token_budget_only_the_cap_applies() -> None:
    b = budget(max_in_flight=1000)
    for _ in range(500):
        assert b.admit(1_000_000, 0.0) is None
        b.release()
    assert b.tokens(0.0) == float("inf")


def test_the_token_bucket_starts_full_drops_over_it_and_refills_per_minute() -> None:
    b = budget(tokens_per_minute=600)  # 10 tokens a second
    assert b.admit(400, 0.0) is None
    assert b.admit(200, 0.0) is None
    assert b.admit(1, 0.0) == "budget"
    assert b.in_flight == 2  # a budget drop takes no slot
    assert b.admit(50, 4.0) == "budget"  # 40 tokens back after 4 s
    assert b.admit(40, 4.0) is None
    assert b.tokens(4.0) == pytest.approx(0.0)
    assert b.tokens(600.0) == 600  # never above a minute's worth


def test_a_request_larger_than_the_budget_never_passes() -> None:
    b = budget(tokens_per_minute=100)
    assert b.admit(101, 0.0) == "budget"
    assert b.admit(101, 3600.0) == "budget"


def test_the_cap_is_checked_before_the_budget_and_neither_is_spent_on_a_drop() -> None:
    b = budget(max_in_flight=1, tokens_per_minute=100)
    assert b.admit(60, 0.0) is None
    assert b.admit(10, 0.0) == "in_flight"
    b.release()
    assert b.tokens(0.0) == pytest.approx(40.0)


def test_changed_limits_apply_in_place_and_calls_in_flight_stay_counted() -> None:
    b = budget(max_in_flight=2, tokens_per_minute=1000)
    assert b.admit(100, 0.0) is None
    b.configure(Shadow(variant="candidate", share=1.0, max_in_flight=1, tokens_per_minute=50), 0.0)
    assert b.admit(1, 0.0) == "in_flight"
    b.release()
    assert b.tokens(0.0) == pytest.approx(50.0)  # clamped to the new bucket
    b.configure(Shadow(variant="candidate", share=1.0, max_in_flight=1), 0.0)
    assert b.admit(10**9, 0.0) is None  # the budget was removed


def _route(**config: Any) -> ShadowRoute:
    pool = Pool.build("cand", PoolConfig(endpoints=["http://127.0.0.1:9"], served_model="cand-7b"))
    return ShadowRoute(
        config=Shadow(variant="candidate", share=1.0, **config),
        variant="candidate",
        pool=pool,
        served_model="cand-7b",
    )


def test_the_shadow_body_is_a_copy_with_the_model_and_streaming_of_the_shadow() -> None:
    body: dict[str, Any] = {
        "model": "bot",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 8,
        "logit_bias": {"1": 2},
    }
    whole = shadow_body(body, _route())
    assert whole == {
        "model": "cand-7b",
        "messages": body["messages"],
        "stream": False,
        "max_tokens": 8,
        "logit_bias": {"1": 2},
    }
    assert body["model"] == "bot"  # the primary's body is untouched
    assert body["stream_options"] == {"include_usage": True}
    streamed = shadow_body({"model": "bot", "prompt": "x"}, _route(stream=True))
    assert streamed == {
        "model": "cand-7b",
        "prompt": "x",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
