"""`loopgate flags --url ...` against a live `loopgate serve`: traffic follows its changes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.integration.test_routing import (
    TOKEN,
    ask,
    assignments,
    flag_doc,
    gateway_config,
    sims,
    write_flags,
)
from tests.support.gateway import GatewayServer
from tests.support.sim import SimServer

__all__ = ["sims"]  # the module-scoped simulators fixture, shared with test_routing

KEY = "cli-bot"
UNITS = [f"cli-user-{i}" for i in range(16)]


def flags_cli(gateway: GatewayServer, *args: str, token: str = TOKEN) -> tuple[int, str]:
    """Run the CLI against the gateway's admin API; (exit code, output)."""
    env = {**os.environ, "LOOPGATE_ADMIN_TOKEN": token, "COLUMNS": "200", "NO_COLOR": "1"}
    cmd = [
        sys.executable, "-m", "cli", "flags", *args, "--url", gateway.base_url,
        "--as", "cli-test",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def gateway(
    gateway_factory: Callable[..., GatewayServer], sims: dict[str, SimServer], tmp_path: Path
) -> GatewayServer:
    """A gateway on a writable flag file holding one 50/50 flag."""
    path = tmp_path / "flags.yaml"
    write_flags(path, flag_doc(KEY))
    return gateway_factory(gateway_config(sims, path))


@pytest.fixture
def sdk(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    """An openai client on the gateway."""
    with gateway.client() as client:
        yield client


def test_cli_changes_move_live_traffic(
    gateway: GatewayServer, sdk: openai.OpenAI, tmp_path: Path
) -> None:
    before = assignments(sdk, KEY, UNITS)
    unit = UNITS[0]
    code, out = flags_cli(gateway, "explain", KEY, unit)
    assert code == 0, out
    assert f"{unit} -> {before[unit]}" in out
    assert "split" in out

    code, out = flags_cli(gateway, "set-weights", KEY, "control=0", "canary=100")
    assert code == 0, out
    assert set(assignments(sdk, KEY, UNITS).values()) == {"canary"}

    code, out = flags_cli(gateway, "kill", KEY)
    assert code == 0, out
    assert set(assignments(sdk, KEY, UNITS).values()) == {"control"}

    code, out = flags_cli(gateway, "unkill", KEY)
    assert code == 0, out
    assert set(assignments(sdk, KEY, UNITS).values()) == {"canary"}

    # `apply` creates a flag: its model is servable at once.
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"flags": [flag_doc("cli-new", control=0, canary=100)]}))
    code, out = flags_cli(gateway, "apply", str(new))
    assert code == 0, out
    assert ask(sdk, "cli-new", "someone").variant == "canary"

    code, out = flags_cli(gateway, "list")
    assert code == 0, out
    assert KEY in out
    assert "cli-new" in out


def test_cli_with_a_wrong_token_changes_nothing(gateway: GatewayServer, sdk: openai.OpenAI) -> None:
    before = assignments(sdk, KEY, UNITS)
    code, out = flags_cli(gateway, "kill", KEY, token="wrong")
    assert code == 1
    assert "401" in out
    assert assignments(sdk, KEY, UNITS) == before
