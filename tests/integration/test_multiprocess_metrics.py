"""`loopgate serve --workers 2`: /metrics sums every worker's values (prometheus multiprocess)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

N = 40


def _sums(gw: GatewayServer) -> dict[str, float]:
    status, body = gw.get("/metrics")
    assert status == 200
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def test_two_workers_counters_sum_to_the_requests_sent(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    sim = sim_factory(model="policy-a")
    config = {
        "pools": {"a": pool(sim.base_url, served_model="policy-a")},
        "models": {"assistant": {"pool": "a"}},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
    }
    gw = gateway_factory(config, workers=2)

    def ask(i: int) -> int:
        body = {"model": "assistant", "messages": [{"role": "user", "content": f"q{i}"}]}
        with httpx.Client(timeout=30) as client:  # a connection each: both workers get some
            return client.post(gw.v1 + "/chat/completions", json=body).status_code

    with ThreadPoolExecutor(8) as pool_:
        assert list(pool_.map(ask, range(N))) == [200] * N

    # Whichever worker answers the scrape, the sums are the same.
    for _ in range(4):
        sums = _sums(gw)
        assert sums["loopgate_requests_total"] == N
        assert sums["loopgate_request_duration_seconds_count"] == N
        assert sums["loopgate_requests_in_flight"] == 0
    # The pipeline's counters are mirrored once a second by each worker.
    deadline = time.monotonic() + 10
    while _sums(gw).get("loopgate_events_emitted_total", 0) < N and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _sums(gw)["loopgate_events_emitted_total"] == N
