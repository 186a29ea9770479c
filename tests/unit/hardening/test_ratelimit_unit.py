"""Token buckets: the Redis script, the local fallback, headers, settling."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth import AppPrincipal
from gateway.config import RateLimitConfig
from gateway.errors import RateLimited
from gateway.ratelimit import RateLimiter, _duration, estimate_tokens
from tests.support.ports import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_reset_durations_read_like_openais() -> None:
    assert [_duration(s) for s in (0.02, 1.0, 6.2, 360)] == ["20ms", "1s", "7s", "6m0s"]
    assert estimate_tokens(400, 50) == 150


async def test_local_buckets_allow_exactly_the_limit() -> None:
    async with RateLimiter.open(RateLimitConfig()) as limiter:
        app = AppPrincipal("a", rpm=3, tpm=1000)
        taken = [await limiter.reserve(app, 100) for _ in range(3)]
        assert dict(taken[-1].headers)[b"x-ratelimit-remaining-requests"] == b"0"
        with pytest.raises(RateLimited) as caught:
            await limiter.reserve(app, 100)
        assert caught.value.status == 429
        assert int(caught.value.headers["retry-after"]) >= 1
        assert caught.value.headers["x-ratelimit-limit-requests"] == "3"


async def test_tokens_are_reserved_then_settled() -> None:
    async with RateLimiter.open(RateLimitConfig()) as limiter:
        app = AppPrincipal("a", tpm=1000)
        first = await limiter.reserve(app, 600)
        with pytest.raises(RateLimited):
            await limiter.reserve(app, 600)
        limiter.settle(first, 100)  # it used far less: 500 come back
        await limiter.reserve(app, 600)


async def test_shared_buckets_in_redis(redis_url: str, redis_namespace: str) -> None:
    config = RateLimitConfig(redis_url=redis_url, namespace=redis_namespace)
    async with RateLimiter.open(config) as one, RateLimiter.open(config) as two:
        app = AppPrincipal("shop", rpm=10, tpm=100_000)
        results = await asyncio.gather(
            *(limiter.reserve(app, 10) for limiter in [one, two] * 15), return_exceptions=True
        )
        allowed = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert (len(allowed), len(refused)) == (10, 20)
        assert all(r.shared for r in allowed)
        assert one.fallbacks == two.fallbacks == 0


async def test_redis_away_falls_back_to_a_local_share() -> None:
    config = RateLimitConfig(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", local_share=0.5, redis_timeout_s=0.2
    )
    async with RateLimiter.open(config) as limiter:
        app = AppPrincipal("shop", rpm=4)
        await limiter.reserve(app, 0)
        await limiter.reserve(app, 0)
        with pytest.raises(RateLimited):
            await limiter.reserve(app, 0)
        assert limiter.fallbacks == 3
