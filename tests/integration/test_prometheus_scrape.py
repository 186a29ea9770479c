"""A real Prometheus scrapes a running gateway under a small load; its API shows each variant.

Two simulated policy versions behind flag `bot` (50/50), a few dozen requests streamed and
not, feedback on some answers; Prometheus (Debian's binary) scrapes every second with the
shipped rules loaded, and queries return per-variant series, including recording rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.gateway import GatewayServer, pool
from tests.support.ports import wait_until
from tests.support.prometheus import PrometheusServer
from tests.support.sim import SimServer

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
N = 30


def _fast_rules(folder: Path) -> list[Path]:
    """The shipped rules with every group evaluated each second (the test cannot wait 30 s)."""
    out = []
    for path in RULES:
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            group["interval"] = "1s"
        copy = folder / path.name
        copy.write_text(yaml.safe_dump(doc))
        out.append(copy)
    return out


def _values(prom: PrometheusServer, expr: str) -> dict[str, float]:
    return {r["metric"].get("variant", ""): float(r["value"][1]) for r in prom.query(expr)}


def test_prometheus_sees_each_variant(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    prometheus_factory: Callable[..., PrometheusServer],
    tmp_path: Path,
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}", ttft=0.01, itl=0.002) for name in "ab"}
    flags = tmp_path / "flags.yaml"
    variants = [{"name": n, "pool": n, "served_model": f"policy-{n}", "weight": 50} for n in sims]
    flags.write_text(
        yaml.safe_dump({"flags": [{"key": "bot", "control": "a", "variants": variants}]})
    )
    config: dict[str, Any] = {
        "pools": {n: pool(s.base_url, served_model=f"policy-{n}") for n, s in sims.items()},
        "flags": {"source": "file", "path": str(flags)},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
        "ids": {"keys": ["k" * 40]},
        "telemetry": {"drift": {"interval_s": 1, "min_samples": 5}},
    }
    gw = gateway_factory(config)
    prom = prometheus_factory([f"127.0.0.1:{gw.port}"], _fast_rules(tmp_path))
    wait_until(prom.targets_up, 20, "prometheus scraping the gateway", interval=0.3)

    served: dict[str, int] = {}
    with httpx.Client(base_url=gw.v1, timeout=30) as client:
        for i in range(N):
            body = {
                "model": "bot", "user": f"user-{i}", "stream": i % 2 == 0,
                "messages": [{"role": "user", "content": "Where is my parcel?"}],
            }  # fmt: skip
            answer = client.post("/chat/completions", json=body)
            assert answer.status_code == 200
            variant = answer.headers["x-loopgate-variant"]
            served[variant] = served.get(variant, 0) + 1
            if not body["stream"]:
                kind = "thumbs_up" if i % 4 else "thumbs_down"
                fb = client.post(
                    "/feedback", json={"response_id": answer.json()["id"], "kind": kind}
                )
                assert fb.status_code == 200, fb.text
    assert set(served) == {"a", "b"}

    expected = {v: float(n) for v, n in served.items()}

    def scraped() -> bool:
        got = _values(prom, 'sum by (variant) (loopgate_requests_total{flag="bot"})')
        return got == expected

    wait_until(scraped, 20, f"requests per variant {expected}", interval=0.5)
    ttft = _values(prom, "sum by (variant) (loopgate_time_to_first_token_seconds_count)")
    assert set(ttft) == {"a", "b"}
    tokens = _values(prom, 'sum by (variant) (loopgate_tokens_total{direction="output"})')
    assert all(tokens[v] > 0 for v in "ab")
    feedback = _values(prom, "sum by (variant) (loopgate_feedback_total)")
    assert sum(feedback.values()) == N // 2
    weights = prom.query('loopgate_flag_variant_weight{flag="bot",control="true"}')
    assert [w["metric"]["variant"] for w in weights] == ["a"]
    assert prom.query("loopgate_events_dropped_total")[0]["value"][1] == "0"

    # rate() in the recording rule needs two scrapes of the series.
    def recorded() -> bool:
        return set(_values(prom, 'loopgate:requests:rate5m{flag="bot"}')) == {"a", "b"}

    deadline = time.monotonic() + 20
    while not recorded() and time.monotonic() < deadline:
        time.sleep(1)
    assert recorded()
