"""`loopgate evaluators agreement` on a real gateway's spool: who agrees with people, who not.

A gateway splits `support-bot` between a formal control and a friendly canary (`loopgate sim`
styles); two reward models (`loopgate sim --reward-term`) score every answer: one rewards the
friendly voice's "!", the other penalises it. Seeded users chat and click thumbs, liking the
friendly answers far more often. The CLI, run as a subprocess on the stopped gateway's spool,
shows the first evaluator agreeing with people (AUC well above 0.5) and the second
disagreeing (well below), and reads at 80 columns.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sim.population import Population, PopulationConfig
from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

FLAG = "support-bot"
REQUESTS = 160


def _config(tmp_path: Path, sims: dict[str, SimServer]) -> dict[str, Any]:
    flags = tmp_path / "flags.yaml"
    flag = {
        "control": "control",
        "variants": [
            {"name": "control", "pool": "formal", "weight": 50},
            {"name": "canary", "pool": "friendly", "weight": 50},
        ],
    }
    flags.write_text(yaml.safe_dump({"flags": {FLAG: flag}}))
    scorer = {"kind": "reward_model", "sample_rate": 1.0, "concurrency": 4}
    return {
        "pools": {name: pool(sim.base_url, served_model=name) for name, sim in sims.items()},
        "flags": {"source": "file", "path": str(flags)},
        "ids": {"keys": ["k" * 40]},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
        "evaluators": {
            "agrees": {**scorer, "pool": "rm-agrees"},
            "disagrees": {**scorer, "pool": "rm-disagrees"},
        },
    }


async def _drive(gw: GatewayServer) -> None:
    """Seeded users who like the friendly voice, until REQUESTS answers were given."""
    like = {"control": 0.2, "canary": 0.85}
    population = Population(gw.base_url, PopulationConfig(like=like, seed=11, concurrency=6))
    stop = asyncio.Event()
    task = asyncio.create_task(population.run(stop))
    try:
        for _ in range(1200):
            await asyncio.sleep(0.1)
            assert not task.done(), task.exception()
            if sum(population.stats.requests.values()) >= REQUESTS:
                break
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sum(population.stats.requests.values()) >= REQUESTS
    assert not population.stats.errors


def _loopgate(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cli", "evaluators", "agreement", *args],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip


def test_agreement_shows_which_reward_model_agrees_with_people(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    sims = {
        "formal": sim_factory(model="formal", style="formal", seed=1, ttft=0.0, itl=0.0),
        "friendly": sim_factory(model="friendly", style="friendly", seed=2, ttft=0.0, itl=0.0),
        "rm-agrees": sim_factory(model="rm-agrees", reward_term=["!=0.5"], seed=3, ttft=0.0),
        "rm-disagrees": sim_factory(model="rm-disagrees", reward_term=["!=-0.5"], seed=3, ttft=0.0),
    }
    gw = gateway_factory(_config(tmp_path, sims))
    asyncio.run(_drive(gw))
    assert gw.stop() == 0  # pending scores finish, then the spool is closed
    spool = tmp_path / "spool"

    # What the CLI reads, counted here from the events themselves.
    events = spooled_events(spool)
    thumbed = [e for e in events if e["type"] == "feedback"]
    thumbs = {e["body"]["response_id"] for e in thumbed
              if e["body"]["kind"] in ("thumbs_up", "thumbs_down")}  # fmt: skip
    scored = {e["body"]["response_id"] for e in events if e["type"] == "evaluation"}
    assert len(thumbs & scored) >= 60

    doc = json.loads(_loopgate("--spool", str(spool), "--window", "all", "--json").stdout)
    rows = {v["evaluator"]: v for v in doc["evaluators"]}
    assert set(rows) == {"agrees", "disagrees"}
    for row in rows.values():
        (window,) = row["windows"]
        assert window["window_start"] is None
        assert window["thumbs_up"] + window["thumbs_down"] == len(thumbs & scored)
        assert window["scored"] == len(scored)
        assert not window["few_thumbs"]
        assert row["trend"] is None  # one window: nothing to move
    # Likes come from the variant (0.85 vs 0.2), not the text itself: some friendly answers
    # are disliked and some formal ones liked, so even the agreeing scorer is no oracle.
    agrees, disagrees = rows["agrees"]["windows"][0]["auc"], rows["disagrees"]["windows"][0]["auc"]
    assert agrees > 0.65, rows
    assert disagrees < 0.35, rows

    # The table at 80 columns, by day: both evaluators, their AUCs, every line in 80.
    shown = _loopgate("--spool", str(spool))
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, shown.stdout
    text = " ".join(shown.stdout.split())
    for name, row in rows.items():
        assert f"evaluator {name} ({row['version']})" in text
    by_day = json.loads(_loopgate("--spool", str(spool), "--json").stdout)
    for row in by_day["evaluators"]:
        for window in row["windows"]:
            if window["auc"] is not None:
                assert f"{window['auc']:.2f}" in text
    # Wide: one table, a row per evaluator and day.
    wide = _loopgate("--spool", str(spool), columns=160).stdout
    assert wide.splitlines()[0].split()[:3] == ["evaluator", "version", "window"]
