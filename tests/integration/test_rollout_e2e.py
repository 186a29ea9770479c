"""The loop end to end on loopback: two `loopgate sim` versions, seeded users, the controller.

The gateway runs with the controller in process (the embedded default) and a writable flag
file; a synthetic population chats through the openai SDK and judges answers with a preference
between the versions. The controller must promote a better canary and roll back a worse or an
erroring one within a bounded number of intervals, and the audit events in the spool must show
each of its flag changes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from feedback.sinks.spool import SEGMENT_SUFFIX
from sim.population import Population, PopulationConfig
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

TOKEN = "rollout-e2e-token"
INTERVAL = 1.0
# Intervals the controller may take from its first step to the final action.
MAX_INTERVALS = 45


def _flags_file(folder: Path) -> Path:
    path = folder / "flags.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "flags": {
                    "support-bot": {
                        "control": "control",
                        "variants": [
                            {"name": "control", "pool": "policy-a", "weight": 100},
                            {"name": "canary", "pool": "policy-b", "weight": 0},
                        ],
                    }
                }
            }
        )
    )
    return path


def _plan() -> dict[str, Any]:
    return {
        "flag": "support-bot",
        "control": "control",
        "canary": "canary",
        "steps": [20, 50, 100],
        "min_duration_s": 2.0,
        "min_exposures": 20,
        "min_feedback": 40,
        "min_outcomes": 5,
        "min_guardrail_sample": 25,
        "tau": 0.1,
        "guardrails": [
            {"metric": "error_rate", "max_relative_increase": 0.5, "absolute_slack": 0.03},
            {"metric": "thumbs_down_share", "max_relative_increase": 0.3, "absolute_slack": 0.05},
        ],
    }


def _events(spool: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")):
        out.extend(json.loads(line) for line in path.read_bytes().splitlines() if line.strip())
    return out


async def _drive(gw: GatewayServer, like: dict[str, float], seed: int) -> dict[str, Any]:
    """Run the population until the rollout ends (or a deadline); return the rollout document."""
    population = Population(gw.base_url, PopulationConfig(like=like, seed=seed, concurrency=6))
    stop = asyncio.Event()
    task = asyncio.create_task(population.run(stop))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    doc: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=10) as http:
            deadline = time.monotonic() + 75
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                assert not task.done(), task.exception()
                answer = await http.get("/admin/experiments/support-bot/rollout")
                doc = answer.json()
                if (doc.get("state") or {}).get("status") in ("promoted", "rolled_back"):
                    break
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return doc


def _run_scenario(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
    like: dict[str, float],
    canary_error_rate: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]], GatewayServer]:
    a = sim_factory(model="policy-a", seed=1)
    b = sim_factory(model="policy-b", seed=2, error_rate=canary_error_rate)
    spool = tmp_path / "spool"
    config = {
        "instance": "rollout-e2e",
        "pools": {
            "policy-a": pool(a.base_url, served_model="policy-a"),
            "policy-b": pool(b.base_url, served_model="policy-b"),
        },
        "flags": {"source": "file", "path": str(_flags_file(tmp_path)), "admin_token": TOKEN},
        "ids": {"keys": ["k" * 40]},
        "events": {"spool": {"dir": str(spool)}},
        "experiments": {
            "plans": [_plan()],
            "controller": {"in_process": True, "interval_s": INTERVAL},
        },
    }
    gw = gateway_factory(config)
    doc = asyncio.run(_drive(gw, like, seed=11))
    assert gw.stop() == 0
    return doc, _events(spool), gw


def _controller_changes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["body"] for e in events if e["type"] == "flag_change" and e["body"]["who"] == "controller"
    ]


def _canary_weight(flag: dict[str, Any]) -> float:
    return float(next(v["weight"] for v in flag["variants"] if v["name"] == "canary"))


def _bounded(state: dict[str, Any]) -> None:
    history = state["history"]
    took = history[-1]["time"] - history[0]["time"]
    assert took <= MAX_INTERVALS * INTERVAL, f"took {took:.1f} s ({len(history)} actions)"


def test_better_canary_is_promoted_to_100(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    doc, events, _ = _run_scenario(
        gateway_factory, sim_factory, tmp_path, {"control": 0.55, "canary": 0.85}
    )
    state = doc["state"]
    assert state["status"] == "promoted", state
    actions = [h["action"] for h in state["history"]]
    assert actions == ["start", "advance", "promote"]
    assert [h["to_share"] for h in state["history"]] == [20, 50, 100]
    _bounded(state)
    changes = _controller_changes(events)
    assert [_canary_weight(c["after"]) for c in changes] == [20, 50, 100]
    assert [c["version"] for c in changes] == [h["flag_version"] for h in state["history"]]
    assert all(c["action"] == "set_weights" for c in changes)


def test_worse_canary_is_rolled_back(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    doc, events, _ = _run_scenario(
        gateway_factory, sim_factory, tmp_path, {"control": 0.75, "canary": 0.35}
    )
    state = doc["state"]
    assert state["status"] == "rolled_back", state
    last = state["history"][-1]
    assert last["action"] == "rollback"
    why = " ".join(last["reasons"])
    assert "thumbs_down_share breached" in why or "canary worse" in why
    _bounded(state)
    changes = _controller_changes(events)
    assert _canary_weight(changes[-1]["after"]) == 0
    assert _canary_weight(changes[-1]["before"]) > 0


def test_erroring_canary_is_rolled_back_on_error_rate(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    doc, events, _ = _run_scenario(
        gateway_factory,
        sim_factory,
        tmp_path,
        {"control": 0.65, "canary": 0.65},
        canary_error_rate=0.3,
    )
    state = doc["state"]
    assert state["status"] == "rolled_back", state
    last = state["history"][-1]
    assert "error_rate breached" in " ".join(last["reasons"])
    _bounded(state)
    assert _canary_weight(_controller_changes(events)[-1]["after"]) == 0


@pytest.mark.parametrize("scenario", ["worse"])
def test_demo_runs_and_stops_by_itself(scenario: str, tmp_path: Path) -> None:
    """`loopgate demo` on embedded defaults ends on its own with a decision and a summary."""
    import subprocess
    import sys

    folder = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--scenario", scenario,
         "--duration", "80", "--interval", "1", "--folder", str(folder)],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rollout rolled_back" in result.stdout
    assert str(folder / "spool") in result.stdout.replace("\n", "")
    # The closing hint is one line, as it is to be copied.
    hint = f"loopgate datasets build --spool {folder / 'spool'} --out dataset/"
    assert hint in result.stdout.splitlines(), result.stdout[-2000:]
    assert any(e["type"] == "flag_change" for e in _events(folder / "spool"))
