"""The whole automatic loop on loopback: shadow calls, a judge comparing each pair, the gate.

A gateway (controller in process) serves `support-bot` from the control only; its shadow
mirrors every request to the candidate, whose `loopgate sim` answers in another voice. A judge
pool (`loopgate sim`, seeded) compares each pair position-swapped and records a preference;
the controller's shadow gate reads the counts. Nobody clicks anything: a worse candidate never
gets a canary and the plan says why; a better one passes and the ladder begins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

TOKEN = "shadow-judge-token"
FLAG = "support-bot"
# The candidate speaks in the friendly voice (openers and closers with "!"); the judge's
# reward term for "!" makes it better or worse than the formal control.
BETTER, WORSE = "!=3", "!=-3"


def _gateway(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
    judge_term: str,
) -> tuple[GatewayServer, SimServer]:
    control = sim_factory(model="policy-a", style="formal", seed=1)
    candidate = sim_factory(model="policy-b", style="friendly", seed=2)
    judge = sim_factory(model="judge-model", reward_term=[judge_term], seed=3)
    flags = tmp_path / "flags.yaml"
    flag = {
        "control": "control",
        "variants": [
            {"name": "control", "pool": "policy-a", "weight": 100},
            {"name": "canary", "pool": "policy-b", "weight": 0},
        ],
        "shadow": {"variant": "canary", "share": 1.0, "max_in_flight": 64},
    }
    flags.write_text(yaml.safe_dump({"flags": {FLAG: flag}}))
    plan = {
        "flag": FLAG, "control": "control", "canary": "canary", "steps": [20, 50, 100],
        "min_duration_s": 2.0, "min_exposures": 20, "min_feedback": 40, "tau": 0.1,
        "shadow_gate": {"min_pairs": 30, "min_win_rate": 0.45},
    }  # fmt: skip
    arbiter = {
        "kind": "judge", "pool": "judge", "pairs": True, "roles": [], "sample_rate": 1.0,
        "concurrency": 4, "pair_wait_s": 30,
    }  # fmt: skip
    config = {
        "pools": {
            "policy-a": pool(control.base_url, served_model="policy-a"),
            "policy-b": pool(candidate.base_url, served_model="policy-b"),
            "judge": pool(judge.base_url, served_model="judge-model"),
        },
        "flags": {"source": "file", "path": str(flags), "admin_token": TOKEN},
        "ids": {"keys": ["k" * 40]},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
        "evaluators": {"arbiter": arbiter},
        "experiments": {
            "plans": [plan],
            "controller": {"in_process": True, "interval_s": 1.0},
        },
    }
    return gateway_factory(config), candidate


def _traffic_until_decided(gw: GatewayServer) -> tuple[dict[str, Any], int]:
    """Users chat in rounds of 10 until the rollout leaves its shadow stage; state, requests."""
    sdk = gw.client()
    admin = httpx.Client(
        base_url=gw.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    state: dict[str, Any] = {}
    sent = 0
    deadline = time.monotonic() + 120
    with admin:
        while time.monotonic() < deadline:
            for _ in range(10):
                sent += 1
                answer = sdk.chat.completions.create(
                    model=FLAG,
                    messages=[{"role": "user", "content": f"how do I reset password {sent}?"}],
                    user=f"user-{sent}",
                    max_tokens=40,
                )
                assert answer.model_extra is not None
                assert answer.model_extra["loopgate"]["variant"] == "control"
            time.sleep(1.0)  # one controller interval
            state = admin.get(f"/admin/experiments/{FLAG}/rollout").json()["state"] or {}
            if state.get("status") != "running" or state.get("step", -1) >= 0:
                break
    return state, sent


def _canary_weight(folder: Path) -> float:
    flags = yaml.safe_load((folder / "flags.yaml").read_text())
    variants = flags["flags"][FLAG]["variants"]
    return float(next(v["weight"] for v in variants if v["name"] == "canary"))


def _judged(gw: GatewayServer, folder: Path) -> list[dict[str, Any]]:
    """The judge's preferences in the spool, once the gateway has stopped."""
    assert gw.stop() == 0
    events = spooled_events(folder / "spool")
    prefs = [e["body"] for e in events if e["type"] == "feedback"]
    completions = {e["body"]["response_id"]: e["body"] for e in events if e["type"] == "completion"}
    for body in prefs:  # each names a real pair: the primary (a) and its own shadow (b)
        assert (body["kind"], body["source"], body["reviewer"]) == (
            "preference",
            "judge",
            "arbiter",
        )
        primary, shadow = completions[body["response_id"]], completions[body["other_response_id"]]
        assert (primary["role"], primary["shadowed"], primary["variant"]) == (
            "primary",
            True,
            "control",
        )
        assert (shadow["role"], shadow["pair_of"], shadow["variant"]) == (
            "shadow",
            body["response_id"],
            "canary",
        )
    return prefs


def test_a_candidate_the_judge_finds_worse_never_gets_a_canary(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    gw, candidate = _gateway(gateway_factory, sim_factory, tmp_path, WORSE)
    state, sent = _traffic_until_decided(gw)
    assert state["status"] == "rolled_back", state
    assert [h["action"] for h in state["history"]] == ["hold", "rollback"]
    assert all(h["to_share"] == 0 for h in state["history"])
    why = state["history"][-1]["reasons"]
    assert why[0].startswith("shadow gate failed: upper bound"), why
    assert _canary_weight(tmp_path) == 0
    # Every request was mirrored once (share 1.0), and no client saw a candidate answer.
    assert len(candidate.requests()) == sent
    prefs = _judged(gw, tmp_path)
    assert len(prefs) >= 30
    assert sum(p["winner"] == "a" for p in prefs) > 0.7 * len(prefs)  # the control won


def test_a_candidate_the_judge_finds_better_passes_the_gate_and_the_ladder_begins(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    gw, candidate = _gateway(gateway_factory, sim_factory, tmp_path, BETTER)
    state, sent = _traffic_until_decided(gw)
    assert state["status"] == "running", state
    assert state["step"] == 0
    assert [h["action"] for h in state["history"]] == ["hold", "start"]
    assert state["history"][-1]["to_share"] == 20
    assert state["history"][-1]["reasons"][0].startswith("shadow gate passed: lower bound")
    assert _canary_weight(tmp_path) == 20
    assert len(candidate.requests()) >= sent  # mirrored, plus the canary's own traffic since
    prefs = _judged(gw, tmp_path)
    assert sum(p["winner"] == "b" for p in prefs) > 0.7 * len(prefs)  # the candidate won
