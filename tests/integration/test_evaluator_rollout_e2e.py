"""Scores drive a rollout end to end: a reward model scores live answers, the controller reads.

A gateway (controller in process) splits `support-bot` between a formal control and a friendly
canary (`loopgate sim` styles); a reward model (`loopgate sim --reward-term '!=0.5'`, which
rewards the friendly voice's "!") scores every answer; seeded users chat and click thumbs,
liking both versions alike. The plan's primary metric is the reward model's mean score, with
people's thumbs-down share as a guardrail: the controller walks the better-scoring canary up
the ladder on real traffic and real scores, and `loopgate experiments show` prints the scores
beside the human metrics at 80 columns.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from sim.population import Population, PopulationConfig
from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

TOKEN = "evaluator-rollout-token"
FLAG = "support-bot"


def _config(tmp_path: Path, control: SimServer, canary: SimServer, rm: SimServer) -> dict[str, Any]:
    flags = tmp_path / "flags.yaml"
    flag = {
        "control": "control",
        "variants": [
            {"name": "control", "pool": "policy-a", "weight": 100},
            {"name": "canary", "pool": "policy-b", "weight": 0},
        ],
    }
    flags.write_text(yaml.safe_dump({"flags": {FLAG: flag}}))
    plan = {
        "flag": FLAG, "control": "control", "canary": "canary", "steps": [20, 50, 100],
        "min_duration_s": 2.0, "min_exposures": 20, "min_guardrail_sample": 20,
        "primary": {"evaluator": "rm", "min_scores": 20},
        "promote_requires_better": True,
        "guardrails": [
            {"metric": "error_rate", "max_relative_increase": 0.5, "absolute_slack": 0.05},
            {"metric": "thumbs_down_share", "max_relative_increase": 0.5, "absolute_slack": 0.15},
        ],
    }  # fmt: skip
    return {
        "pools": {
            "policy-a": pool(control.base_url, served_model="policy-a"),
            "policy-b": pool(canary.base_url, served_model="policy-b"),
            "rm": pool(rm.base_url, served_model="rm"),
        },
        "flags": {"source": "file", "path": str(flags), "admin_token": TOKEN},
        "ids": {"keys": ["k" * 40]},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
        "evaluators": {
            "rm": {"kind": "reward_model", "pool": "rm", "sample_rate": 1.0, "concurrency": 4}
        },
        "experiments": {
            "plans": [plan],
            "controller": {"in_process": True, "interval_s": 1.0},
            "flush_interval_s": 0.5,
        },
    }


async def _drive(gw: GatewayServer) -> dict[str, Any]:
    """Seeded users (liking both versions alike) until the rollout ends or a deadline."""
    like = {"control": 0.6, "canary": 0.6}
    population = Population(gw.base_url, PopulationConfig(like=like, seed=5, concurrency=6))
    stop = asyncio.Event()
    task = asyncio.create_task(population.run(stop))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    doc: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=10) as http:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                assert not task.done(), task.exception()
                doc = (await http.get(f"/admin/experiments/{FLAG}/rollout")).json()
                if (doc.get("state") or {}).get("status") in ("promoted", "rolled_back"):
                    break
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return doc


def test_a_canary_the_reward_model_scores_better_is_promoted_on_scores(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    control = sim_factory(model="policy-a", style="formal", seed=1)
    canary = sim_factory(model="policy-b", style="friendly", seed=2)
    rm = sim_factory(model="rm", reward_term=["!=0.5"], seed=3)
    gw = gateway_factory(_config(tmp_path, control, canary, rm))
    doc = asyncio.run(_drive(gw))
    state = doc["state"]
    assert state["status"] == "promoted", state
    assert [h["action"] for h in state["history"]] == ["start", "advance", "promote"]
    promote = state["history"][-1]["reasons"]
    assert any(r.startswith("primary metric score:rm") and "canary better" in r for r in promote)
    assert "2 guardrails hold" in promote  # error rate and people's thumbs-down share

    # What people see: scores per variant beside the human metrics, API and CLI alike.
    admin = httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {TOKEN}"})
    with admin:
        view = admin.get(f"/admin/experiments/{FLAG}").json()
    (rm_view,) = view["scores"]
    rows = {r["name"]: r for r in rm_view["variants"]}
    assert rows["canary"]["mean"] > rows["control"]["mean"] + 0.5
    assert rows["canary"]["vs_control"]["confidence_sequence"]["low"] > 0
    # The population's thumbs were joined to the scores of the answers they were on.
    assert rows["control"]["labelled"] > 20
    assert rows["canary"]["labelled"] > 20
    assert (
        rm_view["agreement"]["labelled"] == rows["control"]["labelled"] + rows["canary"]["labelled"]
    )
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "experiments", "show", FLAG, "--url", gw.base_url,
         "--token", TOKEN],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, shown.stdout
    text = " ".join(shown.stdout.split())
    assert f"evaluator rm ({rm_view['version']})" in text
    assert f"{rows['canary']['mean']:.3g}" in text
    assert "agreement with thumbs" in text

    # Every exposure scored once: the evaluation events name the variants that served.
    assert gw.stop() == 0
    events = spooled_events(tmp_path / "spool")
    evaluations = [e["body"] for e in events if e["type"] == "evaluation"]
    served = {
        e["body"]["response_id"]: e["body"]["variant"]
        for e in events
        if e["type"] == "completion" and e["body"]["status"] == "ok"
    }
    assert len({e["response_id"] for e in evaluations}) == len(evaluations)
    assert all(served[e["response_id"]] == e["variant"] for e in evaluations)
    counted = sum(r["scores"] for r in rm_view["variants"])
    assert counted <= len(evaluations)


def test_a_canary_the_reward_model_scores_worse_is_rolled_back(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    control = sim_factory(model="policy-a", style="formal", seed=1)
    canary = sim_factory(model="policy-b", style="friendly", seed=2)
    rm = sim_factory(model="rm", reward_term=["!=-0.5"], seed=3)  # now "!" costs reward
    gw = gateway_factory(_config(tmp_path, control, canary, rm))
    state = asyncio.run(_drive(gw))["state"]
    assert state["status"] == "rolled_back", state
    assert state["history"][-1]["to_share"] == 0
    assert any(r.startswith("canary worse on score:rm") for r in state["history"][-1]["reasons"])
