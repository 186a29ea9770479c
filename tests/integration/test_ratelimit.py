"""Rate limits through two real gateways sharing one Redis: exact under concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.auth import hash_secret
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

KEY = "lgk-limited-0123456789"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def _config(sim: SimServer, redis_url: str, namespace: str, limits: dict[str, int]) -> Any:
    return {
        "pools": {"p": pool(sim.base_url, served_model="sim-model")},
        "models": {"m": {"pool": "p"}},
        "events": {"enabled": False},
        "auth": {"keys": [{"hash": hash_secret(KEY), "app_id": "shop", "limits": limits}]},
        # Generous: on a loaded test machine a slow answer must not switch to local buckets.
        "ratelimit": {"redis_url": redis_url, "namespace": namespace, "redis_timeout_s": 3},
    }


async def _burst(urls: list[str], n: int, body: dict[str, Any]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=20) as http:
        return await asyncio.gather(
            *(http.post(urls[i % len(urls)] + "/v1/chat/completions", json=body) for i in range(n))
        )


def test_requests_per_minute_exact_across_two_gateways(
    gateway_factory: Callable[..., GatewayServer],
    sim: SimServer,
    redis_url: str,
    redis_namespace: str,
) -> None:
    config = _config(sim, redis_url, redis_namespace, {"rpm": 12})
    gateways = [gateway_factory(config), gateway_factory(config)]
    answers = asyncio.run(_burst([gw.base_url for gw in gateways], 40, BODY))
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert (len(ok), len(limited)) == (12, 28)
    assert sim.stats()["received"] == 12
    refused = limited[0]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "12"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(12))
    assert ok[0].headers["x-ratelimit-reset-requests"].endswith("s")
    assert all("local buckets decide" not in gw.log() for gw in gateways)


def test_tokens_per_minute_reserve_max_tokens(
    gateway_factory: Callable[..., GatewayServer],
    sim: SimServer,
    redis_url: str,
    redis_namespace: str,
) -> None:
    # Each request reserves about 20 (max_tokens) + 20 (prompt bytes / 4): 5 fit in 210.
    config = _config(sim, redis_url, redis_namespace, {"tpm": 210})
    gateways = [gateway_factory(config), gateway_factory(config)]
    answers = asyncio.run(_burst([gw.base_url for gw in gateways], 12, BODY))
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) == 5, [r.status_code for r in answers]
    assert ok[0].headers["x-ratelimit-limit-tokens"] == "210"
    limited = next(r for r in answers if r.status_code == 429)
    assert limited.headers["x-ratelimit-remaining-tokens"] in {str(n) for n in range(40)}


@pytest.mark.parametrize("limits", [{"rpm": 3}])
def test_without_redis_a_replica_limits_alone(
    gateway_factory: Callable[..., GatewayServer], sim: SimServer, limits: dict[str, int]
) -> None:
    config = _config(sim, "redis://127.0.0.1:1/0", "x", limits)
    gw = gateway_factory(config)
    answers = asyncio.run(_burst([gw.base_url], 6, BODY))
    assert sorted(r.status_code for r in answers) == [200] * 3 + [429] * 3
