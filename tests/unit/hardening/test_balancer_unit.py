"""Endpoint choice, /metrics parsing and the circuit breaker."""

from __future__ import annotations

import asyncio
import time

from gateway.balancer import CLOSED, HALF_OPEN, OPEN, Breaker, Watcher, parse_vllm_metrics
from gateway.config import BalancerConfig, PoolConfig
from gateway.upstream import Pool

METRICS = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 3.0
vllm:num_requests_running{engine="0",model_name="b"} 1.0
vllm:num_requests_waiting{engine="0",model_name="a"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.42
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
"""


def _pool(strategy: str = "load_aware", n: int = 3) -> Pool:
    config = PoolConfig(
        endpoints=[f"http://127.0.0.1:{9000 + i}" for i in range(n)], served_model="m"
    )
    return Pool.build("p", config, BalancerConfig(strategy=strategy))


def test_parse_sums_models_and_ignores_other_gauges() -> None:
    load = parse_vllm_metrics(METRICS)
    assert load is not None
    assert (load.running, load.waiting, load.kv_usage) == (4.0, 7.0, 0.42)
    assert parse_vllm_metrics(b"# nothing\nother_metric 1\n") is None


def test_a_slow_endpoint_is_avoided_even_when_idle() -> None:
    pool = _pool()
    fast_a, fast_b, slow = pool.endpoints
    fast_a.latency, fast_b.latency, slow.latency = 0.05, 0.05, 1.0
    fast_a.in_flight = fast_b.in_flight = 4
    for _ in range(5):
        assert pool.candidates()[-1] is slow
    fast_a.in_flight = fast_b.in_flight = 30  # so busy that waiting behind them is worse
    assert pool.candidates()[0] is slow


def test_others_load_from_metrics_counts() -> None:
    pool = _pool()
    a, b, c = pool.endpoints
    for ep in pool.endpoints:
        ep.latency = 0.1
    a.load.running, a.load.waiting = 8, 4  # other replicas keep it busy
    b.load.kv_usage = 0.99
    order = pool.candidates()
    assert order[0] is c
    assert order[-1] is a


def test_round_robin_rotates() -> None:
    pool = _pool("round_robin")
    firsts = [pool.candidates()[0].url for _ in range(6)]
    assert len(set(firsts)) == 3


def test_breaker_opens_half_opens_and_closes() -> None:
    breaker = Breaker(threshold=3, cooldown_s=10)
    assert not breaker.failure(0)
    assert not breaker.failure(1)
    assert breaker.failure(2)
    assert breaker.state == OPEN
    assert not breaker.allows(5)
    assert breaker.allows(12)
    assert breaker.state == HALF_OPEN
    breaker.begin()
    assert not breaker.allows(12)  # one trial at a time
    assert breaker.failure(13)
    assert breaker.state == OPEN
    assert breaker.allows(23)
    breaker.begin()
    breaker.success()
    assert breaker.state == CLOSED
    assert breaker.allows(23)


def test_open_breakers_and_failed_health_leave_the_pool() -> None:
    pool = _pool()
    a, b, c = pool.endpoints
    for _ in range(5):
        a.breaker.failure(time.monotonic())
    b.healthy = False
    assert pool.candidates() == [c]
    c.healthy = False
    # Failed health checks alone never empty a pool: b and c are tried anyway (fail static),
    # but the pool no longer counts as usable, and an open breaker still keeps `a` out.
    assert sorted(ep.url for ep in pool.candidates()) == sorted([b.url, c.url])
    assert not pool.usable()
    for _ in range(5):
        b.breaker.failure(time.monotonic())
        c.breaker.failure(time.monotonic())
    assert pool.candidates() == []


def test_one_failed_probe_does_not_take_an_endpoint_out() -> None:
    pool = _pool(n=1)
    (ep,) = pool.endpoints
    watcher = Watcher(None, {"p": pool}, BalancerConfig(unhealthy_after=2))  # type: ignore[arg-type]
    answers = iter([TimeoutError(), (200, b""), TimeoutError(), TimeoutError(), (200, b"")])

    async def probe(endpoint: object, path: str) -> tuple[int, bytes]:
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    watcher._get = probe  # type: ignore[method-assign]
    seen = []
    for _ in range(5):
        asyncio.run(watcher._check_health(ep))
        seen.append(ep.healthy)
    assert seen == [True, True, True, False, True]
