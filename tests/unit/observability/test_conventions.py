"""Metric conventions: series that exist from the start, labels instead of codes, no _created.

One gateway in process over two real simulators; one `loopgate serve --workers 2` for the
multiprocess mode, where the same series must come out of the summed worker files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer
from tests.unit.observability.live import flag_settings, running

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
BODY = {"model": "bot", "user": "u1", "messages": [{"role": "user", "content": "Hi"}]}


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of that name whose labels include these; None when there is none."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def _assert_known_series_at_start(samples: Samples) -> None:
    """Counters whose labels the config names exist before anything happened to them."""
    for pool_ in ("a", "b"):
        for kind in ("connect", "timeout", "bad_response", "midstream", "http_5xx"):
            assert _value(samples, "loopgate_upstream_errors_total", pool=pool_, kind=kind) == 0
        assert _value(samples, "loopgate_upstream_retries_total", pool=pool_) == 0
    for outcome in ("ok", "error", "timeout", "dropped"):
        assert _value(samples, "loopgate_safety_classifier_calls_total", outcome=outcome) == 0
    for variant in ("a", "b"):
        for source in ("prompt", "answer"):
            found = {"flag": "bot", "variant": variant, "category": "jailbreak", "source": source}
            assert _value(samples, "loopgate_safety_findings_total", **found) == 0
        reports = {"flag": "bot", "variant": variant, "category": "spam"}
        assert _value(samples, "loopgate_safety_reports_total", **reports) == 0
    for category in ("email", "phone", "card", "api_key"):
        assert _value(samples, "loopgate_redaction_findings_total", category=category) == 0
    assert not [n for n, _ in samples if n.endswith("_created")]


def test_series_exist_at_start_and_breaker_state_is_a_label(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}") for name in "ab"}
    experiments = {
        "controller": {"in_process": True, "interval_s": 0.2},
        "plans": [{"flag": "bot", "control": "a", "canary": "b", "steps": [50, 100]}],
    }
    settings = flag_settings(
        {n: s.base_url for n, s in sims.items()}, tmp_path, experiments=experiments
    )

    async def scenario() -> tuple[str, str]:
        async with running(settings) as (_, client):
            before = (await client.get("/metrics")).text
            assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
            refused = await client.post("/v1/chat/completions", json={**BODY, "model": "nope"})
            assert refused.status_code == 404
            for _ in range(50):  # the controller's first tick writes the share
                after = (await client.get("/metrics")).text
                if "loopgate_rollout_canary_share{" in after:
                    break
                await asyncio.sleep(0.1)
            return before, after

    before, after = asyncio.run(scenario())
    start = _samples(before)
    _assert_known_series_at_start(start)
    assert _value(start, "loopgate_overhead_seconds_count", route="chat") == 0
    # One series per breaker state, 1 for the current one.
    for pool_ in ("a", "b"):
        states = {
            state: _value(start, "loopgate_upstream_circuit_state", pool=pool_, state=state)
            for state in ("closed", "half_open", "open")
        }
        assert states == {"closed": 1, "half_open": 0, "open": 0}

    end = _samples(after)
    # The answered request and the one refused by the gateway itself: both its own time.
    assert _value(end, "loopgate_overhead_seconds_count", route="chat") == 2
    assert not [n for n, _ in end if n.endswith("_created")]
    # A 0-1 ratio: the plan's first step is 50 %.
    assert _value(end, "loopgate_rollout_canary_share", flag="bot") == 0.5
    for action in ("start", "advance", "promote", "rollback"):
        assert _value(end, "loopgate_rollout_actions_total", flag="bot", action=action) is not None
    assert _value(end, "loopgate_rollout_actions_total", flag="bot", action="rollback") == 0
    statuses = {
        s: _value(end, "loopgate_rollout_status", flag="bot", status=s)
        for s in ("running", "paused", "promoted", "rolled_back")
    }
    assert statuses == {"running": 1, "paused": 0, "promoted": 0, "rolled_back": 0}


def test_series_exist_at_start_with_two_workers(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}") for name in "ab"}
    flags = tmp_path / "flags.yaml"
    settings = flag_settings({n: s.base_url for n, s in sims.items()}, tmp_path)
    config: dict[str, Any] = {
        "pools": {n: pool(s.base_url, served_model=f"policy-{n}") for n, s in sims.items()},
        "flags": {"source": "file", "path": str(flags)},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
        "ids": {"keys": ["k" * 40]},
    }
    assert settings.flags.path == flags  # flag_settings wrote the flag file
    gw = gateway_factory(config, workers=2)
    # Each worker labels its series when it starts and mirrors the pipeline's once a second.
    deadline = time.monotonic() + 10
    while True:
        status, body = gw.get("/metrics")
        assert status == 200
        samples = _samples(body.decode())
        ready = _value(samples, "loopgate_redaction_findings_total", category="email") is not None
        if ready or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    _assert_known_series_at_start(samples)
    answer = httpx.post(gw.v1 + "/chat/completions", json=BODY, timeout=30)
    assert answer.status_code == 200
    _, body = gw.get("/metrics")
    assert _value(_samples(body.decode()), "loopgate_overhead_seconds_count", route="chat") == 1
