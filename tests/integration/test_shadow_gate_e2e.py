"""The shadow gate end to end on loopback: a gateway with the controller in process, two
`loopgate sim` versions, and an app judging pairs through /v1/feedback with seeded winners.

A worse candidate never gets a canary (the plan is rolled back, and says why); a better one
passes the gate and the ladder begins. The pairs are a control answer (split) and a candidate
answer (a unit pinned to it by an allow rule) to the same question: the gateway on this branch
sends no shadow calls yet, and the gate counts any judged pair of the two variants.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

TOKEN = "shadow-gate-token"
FLAG = "support-bot"


def _gateway(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> GatewayServer:
    a = sim_factory(model="policy-a", seed=1)
    b = sim_factory(model="policy-b", seed=2)
    flags = tmp_path / "flags.yaml"
    flag = {
        "control": "control",
        "variants": [
            {"name": "control", "pool": "policy-a", "weight": 100},
            {"name": "canary", "pool": "policy-b", "weight": 0},
        ],
        "rules": [{"kind": "allow_units", "units": ["pinned"], "variant": "canary"}],
        "shadow": {"variant": "canary", "share": 0.01},
    }
    flags.write_text(yaml.safe_dump({"flags": {FLAG: flag}}))
    plan = {
        "flag": FLAG, "control": "control", "canary": "canary", "steps": [20, 50, 100],
        "min_duration_s": 2.0, "min_exposures": 20, "min_feedback": 40, "tau": 0.1,
        "shadow_gate": {"min_pairs": 40, "min_win_rate": 0.45},
    }  # fmt: skip
    config = {
        "pools": {
            "policy-a": pool(a.base_url, served_model="policy-a"),
            "policy-b": pool(b.base_url, served_model="policy-b"),
        },
        "flags": {"source": "file", "path": str(flags), "admin_token": TOKEN},
        "ids": {"keys": ["k" * 40]},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
        "experiments": {
            "plans": [plan],
            "controller": {"in_process": True, "interval_s": 1.0},
        },
    }
    return gateway_factory(config)


def _judge_until_decided(gw: GatewayServer, candidate_wins: float, seed: int) -> dict[str, Any]:
    """Judge pairs in rounds of 10 until the rollout leaves its shadow stage; its state."""
    rng = random.Random(seed)
    sdk = gw.client()
    admin = httpx.Client(
        base_url=gw.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    state: dict[str, Any] = {}
    deadline = time.monotonic() + 90
    i = 0
    with admin, httpx.Client(base_url=gw.v1, timeout=10) as app:
        while time.monotonic() < deadline:
            for _ in range(10):
                i += 1
                question: list[Any] = [{"role": "user", "content": f"question {i}"}]
                live = sdk.chat.completions.create(model=FLAG, messages=question, user=f"u{i}")
                shadow = sdk.chat.completions.create(model=FLAG, messages=question, user="pinned")
                # Shown in a random order; the winner follows the candidate's seeded quality.
                first, second = (live.id, shadow.id) if rng.random() < 0.5 else (shadow.id, live.id)
                candidate_won = rng.random() < candidate_wins
                winner = "a" if (first == shadow.id) == candidate_won else "b"
                sent = app.post(
                    "/feedback",
                    json={"response_id": first, "kind": "preference",
                          "other_response_id": second, "winner": winner},
                )  # fmt: skip
                assert sent.status_code == 200, sent.text
            time.sleep(1.2)  # one controller interval
            state = admin.get(f"/admin/experiments/{FLAG}/rollout").json()["state"] or {}
            if state.get("status") != "running" or state.get("step", -1) >= 0:
                break
    return state


def _canary_weight(folder: Path) -> float:
    """The canary's weight in the flag file, as the controller last wrote it."""
    flags = yaml.safe_load((folder / "flags.yaml").read_text())
    variants = flags["flags"][FLAG]["variants"]
    return float(next(v["weight"] for v in variants if v["name"] == "canary"))


def test_a_worse_candidate_in_shadow_never_gets_a_canary(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    gw = _gateway(gateway_factory, sim_factory, tmp_path)
    state = _judge_until_decided(gw, candidate_wins=0.15, seed=5)
    assert state["status"] == "rolled_back", state
    assert state["step"] == -1
    assert [h["action"] for h in state["history"]] == ["hold", "rollback"]
    assert all(h["to_share"] == 0 for h in state["history"])
    why = state["history"][-1]["reasons"]
    assert why[0].startswith("shadow gate failed: upper bound"), why
    assert "canary vs control: win rate" in why[1]
    assert _canary_weight(tmp_path) == 0
    assert gw.stop() == 0


def test_a_better_candidate_passes_the_gate_and_the_ladder_begins(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    gw = _gateway(gateway_factory, sim_factory, tmp_path)
    state = _judge_until_decided(gw, candidate_wins=0.85, seed=6)
    assert state["status"] == "running", state
    assert state["step"] == 0
    assert [h["action"] for h in state["history"]] == ["hold", "start"]
    start = state["history"][-1]
    assert start["to_share"] == 20
    assert start["reasons"][0].startswith("shadow gate passed: lower bound"), start
    assert _canary_weight(tmp_path) == 20
    assert gw.stop() == 0
