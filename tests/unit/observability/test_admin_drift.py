"""`loopgate drift show|freeze|load` against a running gateway's /admin/drift."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import typer
import yaml
from typer.testing import CliRunner

from cli.drift import register
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

TOKEN = "t" * 32


def test_freeze_show_and_load(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    sim = sim_factory(model="policy-a")
    flags = tmp_path / "flags.yaml"
    variant = {"name": "a", "pool": "a", "served_model": "policy-a", "weight": 1}
    flags.write_text(
        yaml.safe_dump({"flags": [{"key": "bot", "control": "a", "variants": [variant]}]})
    )
    gw = gateway_factory(
        {
            "pools": {"a": pool(sim.base_url, served_model="policy-a")},
            "flags": {"source": "file", "path": str(flags), "admin_token": TOKEN},
            "events": {"spool": {"dir": str(tmp_path / "spool")}},
            "telemetry": {"drift": {"min_samples": 5, "baseline_path": str(tmp_path / "b.json")}},
        }
    )
    with httpx.Client(base_url=gw.v1, timeout=30) as client:
        for i in range(8):
            body = {"model": "bot", "messages": [{"role": "user", "content": f"question {i}"}]}
            assert client.post("/chat/completions", json=body).status_code == 200
        assert client.get(gw.base_url + "/admin/drift").status_code == 401

    cli = typer.Typer()
    register(cli)
    runner = CliRunner()
    args = ["--url", gw.base_url, "--token", TOKEN]
    saved = tmp_path / "saved.json"
    done = runner.invoke(cli, ["drift", "freeze", *args, "--out", str(saved)])
    assert done.exit_code == 0, done.output
    assert "froze bot/a" in done.output
    assert json.loads(saved.read_text())["profiles"][0]["total"] == 8
    assert (tmp_path / "b.json").exists()

    done = runner.invoke(cli, ["drift", "show", *args, "--json"])
    assert done.exit_code == 0, done.output
    (profile,) = json.loads(done.output)["profiles"]
    assert profile["window_samples"] == profile["baseline_samples"] == 8
    assert max(profile["psi"].values()) < 0.01

    done = runner.invoke(cli, ["drift", "load", str(saved), *args])
    assert done.exit_code == 0, done.output
    assert "loaded 1 baseline profiles" in done.output
