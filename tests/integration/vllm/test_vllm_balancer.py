"""The load-aware balancer reads real vLLM's /metrics: a busy vLLM is avoided.

The burst goes to vLLM directly, not through the gateway, so the gateway's own in-flight
count stays at zero: only the polled `vllm:num_requests_running` / `_waiting` can tell it
that vLLM is busy. The pool's other endpoint is an idle simulator serving the same name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.support.gateway import GatewayServer, pool
from tests.support.ports import wait_until
from tests.support.sim import SimFactory
from tests.support.vllm import SETUP_TIMEOUT_S, VllmServer

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(SETUP_TIMEOUT_S)]


def _queue(gw: GatewayServer, endpoint: str) -> float:
    """What the gateway last read from the endpoint's /metrics: running + waiting."""
    text = gw.get("/metrics")[1].decode()
    for line in text.splitlines():
        if (
            line.startswith("loopgate_upstream_endpoint_queue{")
            and f'endpoint="{endpoint}"' in line
        ):
            return float(line.split()[-1])
    return 0.0


def test_requests_avoid_a_vllm_that_its_metrics_show_busy(
    vllm_server: VllmServer,
    sim_factory: SimFactory,
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    idle = sim_factory(model=vllm_server.base_model)
    config = {
        "pools": {
            "p": pool(vllm_server.base_url, idle.base_url, served_model=vllm_server.base_model)
        },
        "models": {"tiny": {"pool": "p"}},
        # vLLM's API server answers /metrics slowly while its engine has the CPU.
        "balancer": {"metrics_interval_s": 0.2, "health_interval_s": 0, "probe_timeout_s": 10},
    }
    gw = gateway_factory(config)
    burst_size = vllm_server.max_num_seqs * 3
    stop = threading.Event()

    def keep_vllm_busy() -> None:
        body = {"model": vllm_server.base_model, "prompt": "Once upon", "max_tokens": 400,
                "ignore_eos": True}  # fmt: skip
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                try:
                    client.post(vllm_server.api_base + "/completions", json=body)
                except httpx.HTTPError:
                    time.sleep(0.1)  # the burst only has to keep vLLM busy

    workers = [threading.Thread(target=keep_vllm_busy) for _ in range(burst_size)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: _queue(gw, vllm_server.base_url) >= 1, 60, "gateway seeing vLLM busy")
        idle.reset()
        client = gw.client()
        for _ in range(12):
            client.completions.create(model="tiny", prompt="Hello", max_tokens=4)
        to_idle = idle.stats()["received"]
    finally:
        stop.set()
        for worker in workers:
            worker.join(150)
    # Round-robin would send 6 of 12 to each; vLLM's gauges update coarsely, so allow that
    # an update may briefly show it idle while the 12 go out.
    assert to_idle >= 9, f"only {to_idle} of 12 went to the idle endpoint"
