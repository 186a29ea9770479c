"""Breakers, health checks and fallback to control through a real gateway and simulators."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from feedback.sinks.spool import SEGMENT_SUFFIX
from router.model import parse_flag
from router.stores import dump_flags
from tests.support.gateway import GatewayServer, pool
from tests.support.ports import free_port, wait_until
from tests.support.sim import SimServer

BODY = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "user": "u1"}


def _metric(gw: GatewayServer, name: str, **labels: str) -> float:
    _, text = gw.get("/metrics")
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.decode().splitlines():
        if line.startswith(name) and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _events(spool: Path) -> list[dict[str, Any]]:
    lines: list[bytes] = []
    for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")):
        lines.extend(line for line in path.read_bytes().splitlines() if line.strip())
    return [json.loads(line) for line in lines]


def test_a_dead_variant_falls_back_to_control(
    gateway_factory: Callable[..., GatewayServer], sim: SimServer, tmp_path: Path
) -> None:
    flag = {
        "key": "assistant",
        "control": "a",
        "variants": [
            {"name": "a", "pool": "a", "weight": 0},
            {"name": "b", "pool": "b", "weight": 100},
        ],
    }
    flags = tmp_path / "flags.yaml"
    flags.write_text(dump_flags([parse_flag(flag)]))
    dead = f"http://127.0.0.1:{free_port()}"
    spool = tmp_path / "spool"
    gw = gateway_factory(
        {
            "pools": {
                "a": pool(sim.base_url, served_model="sim-model"),
                "b": pool(dead, served_model="policy-b"),
            },
            "flags": {"source": "file", "path": str(flags)},
            "events": {"spool": {"dir": str(spool)}},
            "balancer": {"failure_threshold": 2, "cooldown_s": 60, "health_interval_s": 0},
        }
    )
    for _ in range(4):
        answer = httpx.post(gw.v1 + "/chat/completions", json=BODY, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-loopgate-fallback"] == "true"
        assert answer.headers["x-loopgate-variant"] == "a"
    assert _metric(gw, "loopgate_fallbacks_total", flag="assistant", variant="b") == 4
    # Two connect failures opened b's breaker: later requests did not even try it.
    assert _metric(gw, "loopgate_upstream_circuit_state", pool="b", state="open") == 1
    assert _metric(gw, "loopgate_upstream_circuit_state", pool="b", state="closed") == 0
    assert sim.stats()["received"] == 4
    assert gw.stop() == 0
    completions = [e for e in _events(spool) if e["type"] == "completion"]
    assert len(completions) == 4
    assert all(e["body"]["fallback"] is True for e in completions)
    assert all(e["body"]["variant"] == "a" for e in completions)


def test_static_model_with_every_endpoint_down_is_a_503_not_a_500(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    gw = gateway_factory(
        {
            "pools": {"p": pool(*dead, served_model="m")},
            "models": {"m": {"pool": "p"}},
            "events": {"enabled": False},
            "balancer": {"failure_threshold": 1, "health_interval_s": 0},
        }
    )
    for _ in range(3):
        answer = httpx.post(gw.v1 + "/chat/completions", json={**BODY, "model": "m"}, timeout=10)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "upstream_unavailable"


def test_health_checks_take_a_dead_endpoint_out_and_metrics_are_read(
    gateway_factory: Callable[..., GatewayServer], sim_factory: Callable[..., SimServer]
) -> None:
    live = sim_factory(max_num_seqs=1, ttft=0.3)
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(
        {
            "pools": {"p": pool(live.base_url, dead, served_model="sim-model")},
            "models": {"m": {"pool": "p"}},
            "events": {"enabled": False},
            "balancer": {"health_interval_s": 0.2, "metrics_interval_s": 0.1},
        }
    )
    wait_until(
        lambda: (
            _metric(gw, "loopgate_upstream_endpoint_healthy", endpoint=dead) == 0
            and _metric(gw, "loopgate_upstream_endpoint_healthy", endpoint=live.base_url) == 1
        ),
        10,
        "health checks",
    )
    for _ in range(3):  # nothing is sent to the dead endpoint: no failures, no retries
        answer = httpx.post(gw.v1 + "/chat/completions", json={**BODY, "model": "m"}, timeout=10)
        assert answer.status_code == 200
    assert "unreachable" not in gw.log()
    assert _metric(gw, "loopgate_upstream_circuit_state", endpoint=dead, state="closed") == 1
