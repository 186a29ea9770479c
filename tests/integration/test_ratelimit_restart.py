"""Rate limits across a Redis restart and outage: the budget already spent stays spent."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from gateway.auth import hash_secret
from tests.support.gateway import GatewayServer, pool
from tests.support.redis import RedisServer
from tests.support.sim import SimServer

KEY = "lgk-restart-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
RPM = 6  # refills one request every 10 s: a slow test machine adds few


def _gateway(factory: Callable[..., GatewayServer], sim: SimServer, redis_url: str) -> Any:
    return factory(
        {
            "pools": {"p": pool(sim.base_url, served_model="sim-model")},
            "models": {"m": {"pool": "p"}},
            "events": {"enabled": False},
            "auth": {
                "keys": [{"hash": hash_secret(KEY), "app_id": "shop", "limits": {"rpm": RPM}}]
            },
            # Once on local buckets, stay there for the whole test: what they admit shows.
            "ratelimit": {
                "redis_url": redis_url,
                "redis_timeout_s": 3,
                "retry_redis_after_s": 300,
            },
        }
    )


def _admitted(gw: GatewayServer, n: int) -> int:
    codes = [
        httpx.post(gw.v1 + "/chat/completions", json=BODY, headers=AUTH, timeout=20).status_code
        for _ in range(n)
    ]
    assert set(codes) <= {200, 429}, codes
    return codes.count(200)


def test_a_redis_restart_keeps_the_spent_budget(
    gateway_factory: Callable[..., GatewayServer], sim: SimServer, redis_server: RedisServer
) -> None:
    gw = _gateway(gateway_factory, sim, redis_server.url)
    started = time.monotonic()
    assert _admitted(gw, 3) == 3
    redis_server.stop()
    redis_server.start()  # persistent: the bucket (3 of 6 left) survives the restart
    admitted = _admitted(gw, 8)
    refilled = math.ceil((time.monotonic() - started) * RPM / 60)
    assert 3 <= admitted <= 3 + refilled
    # The pooled connections died with the server: a fresh one answered, no local fallback.
    assert "local buckets decide" not in gw.log()


def test_redis_gone_after_part_of_the_budget_is_spent(
    gateway_factory: Callable[..., GatewayServer], sim: SimServer, redis_server: RedisServer
) -> None:
    gw = _gateway(gateway_factory, sim, redis_server.url)
    started = time.monotonic()
    assert _admitted(gw, 3) == 3
    redis_server.stop()
    admitted = _admitted(gw, 8)  # local buckets, starting from what Redis last said was left
    refilled = math.ceil((time.monotonic() - started) * RPM / 60)
    assert 3 <= admitted <= 3 + refilled
    assert "local buckets decide" in gw.log()
