"""Faults beyond the upstream's: Redis and the broker killed and restarted, a slow reader.

In each, the gateway stays up, answers or fails fast with the right error, and loses no
accepted event. Everything runs on loopback and is bounded in time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import redis

from gateway.auth import hash_secret
from tests.support.gateway import GatewayServer, pool
from tests.support.kafka import TansuBroker, consume_all
from tests.support.ports import wait_until
from tests.support.redis import RedisServer
from tests.support.sim import SimServer

KEY = "lgk-faults-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _post(gw: GatewayServer, body: dict[str, Any] = BODY) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers=AUTH, timeout=10)


def test_redis_killed_and_restarted(
    gateway_factory: Callable[..., GatewayServer], sim: SimServer, redis_server: RedisServer
) -> None:
    gw = gateway_factory(
        {
            "pools": {"p": pool(sim.base_url, served_model="sim-model")},
            "models": {"m": {"pool": "p"}},
            "events": {"enabled": False},
            "auth": {
                "keys": [{"hash": hash_secret(KEY), "app_id": "shop", "limits": {"rpm": 1000}}]
            },
            "ratelimit": {"redis_url": redis_server.url, "retry_redis_after_s": 0.3},
        }
    )
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert _post(gw).status_code == 200
        assert client.exists("loopgate:ratelimit:shop")
        redis_server.stop()
        started = time.monotonic()
        for _ in range(5):  # fail static: local buckets decide, fast
            answer = _post(gw)
            assert answer.status_code == 200
            assert answer.headers["x-ratelimit-limit-requests"] == "1000"
        assert time.monotonic() - started < 5
        assert "local buckets decide" in gw.log()
        redis_server.start()
        client.delete("loopgate:ratelimit:shop")

        def shared_again() -> bool:
            assert _post(gw).status_code == 200
            return bool(client.exists("loopgate:ratelimit:shop"))

        wait_until(shared_again, 10, "rate limits back on Redis", interval=0.2)
    finally:
        client.close()


def test_broker_killed_and_restarted_loses_no_event(
    gateway_factory: Callable[..., GatewayServer],
    sim: SimServer,
    restartable_kafka: TansuBroker,
    tmp_path: Any,
) -> None:
    gw = gateway_factory(
        {
            "pools": {"p": pool(sim.base_url, served_model="sim-model")},
            "models": {"m": {"pool": "p"}},
            "events": {
                "kafka": {
                    "bootstrap_servers": [restartable_kafka.bootstrap],
                    "send_timeout_s": 2,
                    "connect_timeout_s": 1,
                    "retry_backoff_max_s": 1,
                },
                "spool": {"dir": str(tmp_path / "spool")},
            },
        }
    )
    ids = [_post(gw).json()["id"] for _ in range(3)]
    restartable_kafka.kill()
    started = time.monotonic()
    for _ in range(5):  # the broker's absence costs the request path nothing
        answer = _post(gw)
        assert answer.status_code == 200
        ids.append(answer.json()["id"])
    assert time.monotonic() - started < 5
    restartable_kafka.start()
    # The restarted in-memory broker starts empty: every event must arrive again, from the
    # spool or a retry (at least once; event_id dedupes).
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while not set(ids[3:]) <= seen and time.monotonic() < deadline:
        records = consume_all(restartable_kafka.bootstrap, ["loopgate.completions.v1"], 5, 10)
        seen |= {orjson.loads(r.value)["body"]["response_id"] for r in records}
    assert set(ids[3:]) <= seen


def test_a_slow_reader_holds_only_its_own_stream(
    gateway_factory: Callable[..., GatewayServer], sim_factory: Callable[..., SimServer]
) -> None:
    sim = sim_factory(output_tokens=4000)
    gw = gateway_factory(
        {
            "pools": {"p": pool(sim.base_url, served_model="sim-model")},
            "models": {"m": {"pool": "p"}},
            "events": {"enabled": False},
        }
    )
    body = orjson.dumps({**BODY, "stream": True, "max_tokens": 4000})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    slow = socket.create_connection(("127.0.0.1", gw.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        slow.sendall(request)
        assert slow.recv(64)  # the stream started; now stop reading
        for _ in range(5):  # everyone else is served, quickly
            started = time.monotonic()
            assert _post(gw, {**BODY, "stream": False}).status_code == 200
            assert time.monotonic() - started < 2
    finally:
        slow.close()
    # Closing the slow reader cuts its upstream request too.
    wait_until(lambda: sim.stats()["cancelled"] >= 1 or sim.stats()["completed"] >= 6, 10, "cut")
    assert gw.get("/healthz")[0] == 200
