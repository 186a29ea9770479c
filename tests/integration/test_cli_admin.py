"""The admin commands against a real `loopgate serve`: one client, one way to reach it.

Every command runs as users run it (a subprocess of `python -m cli`) with COLUMNS=80.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.gateway import GatewayServer, pool
from tests.support.ports import free_port, wait_until
from tests.support.sim import SimServer

TOKEN = "cli-admin-token"
FLAG = "support-bot"


@pytest.fixture
def gw(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> GatewayServer:
    """A gateway with an 80/20 flag over two simulators, experiments on, no controller."""
    a, b = sim_factory(model="policy-a"), sim_factory(model="policy-b")
    flags = tmp_path / "flags.yaml"
    variants = [
        {"name": "control", "pool": "policy-a", "weight": 80},
        {"name": "canary", "pool": "policy-b", "weight": 20},
    ]
    flags.write_text(
        yaml.safe_dump({"flags": {FLAG: {"control": "control", "variants": variants}}})
    )
    config = {
        "pools": {
            "policy-a": pool(a.base_url, served_model="policy-a"),
            "policy-b": pool(b.base_url, served_model="policy-b"),
        },
        "flags": {"source": "file", "path": str(flags), "admin_token": TOKEN},
        "ids": {"keys": ["k" * 40]},
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
    }
    return gateway_factory(config)


def cli(*args: str, url: str | None = None, token: str | None = TOKEN,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`loopgate ARGS` with LOOPGATE_URL / LOOPGATE_ADMIN_TOKEN from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGATE_")}
    env.update({"COLUMNS": "80", "NO_COLOR": "1"})
    if url is not None:
        env["LOOPGATE_URL"] = url
    if token is not None:
        env["LOOPGATE_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def _admin(gw: GatewayServer) -> httpx.Client:
    return httpx.Client(
        base_url=gw.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )


def _clean(done: subprocess.CompletedProcess[str]) -> str:
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    return out


def test_url_token_and_json_come_from_the_environment_on_every_admin_command(
    gw: GatewayServer,
) -> None:
    for args in (["flags", "list", "--json"], ["flags", "show", FLAG, "--json"],
                 ["flags", "explain", FLAG, "u1", "--json"], ["experiments", "list", "--json"],
                 ["experiments", "show", FLAG, "--json"], ["drift", "show", "--json"]):  # fmt: skip
        done = cli(*args, url=gw.base_url)
        assert done.returncode == 0, _clean(done)
        assert done.stdout.lstrip().startswith("{"), done.stdout
    # --url after the subcommand wins over the environment, as everywhere.
    done = cli("flags", "list", "--url", gw.base_url, url="http://127.0.0.1:9")
    assert done.returncode == 0, _clean(done)


def test_errors_are_one_line_with_what_to_do(gw: GatewayServer) -> None:
    done = cli("flags", "list", url=gw.base_url, token=None)
    assert done.returncode == 1
    assert done.stderr.startswith("error: 401: ")
    assert "LOOPGATE_ADMIN_TOKEN" in done.stderr
    assert done.stdout == ""
    done = cli("experiments", "show", "nope", url=gw.base_url)
    assert done.returncode == 1
    assert "404" in _clean(done)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, never listening: refused
        done = cli("drift", "show", url=f"http://127.0.0.1:{closed}")
    assert done.returncode == 1
    assert f"cannot reach http://127.0.0.1:{closed}" in _clean(done)


def test_flags_list_after_a_kill_shows_the_kill(gw: GatewayServer) -> None:
    assert cli("flags", "kill", FLAG, url=gw.base_url).returncode == 0
    done = cli("flags", "list", url=gw.base_url)
    out = _clean(done)
    assert "killed" in out
    assert "all to control" in out
    assert "80%" not in out  # the split does not apply while killed
    shown = _clean(cli("flags", "show", FLAG, url=gw.base_url))
    assert "traffic: all to control (killed)" in shown


def _traffic(gw: GatewayServer, users: int) -> None:
    client = gw.client()
    for i in range(users):
        answer = client.chat.completions.create(
            model=FLAG, messages=[{"role": "user", "content": "hi"}], user=f"user-{i}"
        )
        kind = "thumbs_up" if i % 3 else "thumbs_down"
        client.post("/feedback", cast_to=object, body={"response_id": answer.id, "kind": kind})


def test_experiments_show_reads_in_full_at_80_columns(gw: GatewayServer) -> None:
    _traffic(gw, 40)
    with _admin(gw) as admin:
        wait_until(
            lambda: sum(v["positive"] + v["negative"] for v in
                        admin.get(f"/admin/experiments/{FLAG}").json()["report"]["variants"]) == 40,
            10, "feedback counted",
        )  # fmt: skip
    done = cli("experiments", "show", FLAG, url=gw.base_url)
    out = _clean(done)
    assert done.returncode == 0, out
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), done.stdout
    assert "…" not in done.stdout
    for text in ("control", "canary", "up share (95% CI)", "vs control (95% CS)",
                 "always-valid p", "fixed-sample"):  # fmt: skip
        assert text in done.stdout, done.stdout


def _plan(gw: GatewayServer) -> Any:
    with _admin(gw) as admin:
        answer = admin.get(f"/admin/experiments/{FLAG}/rollout")
    return answer.json() if answer.status_code == 200 else None


def test_rollout_set_asks_before_lowering_a_live_share(gw: GatewayServer) -> None:
    args = ("rollout", "set", FLAG, "--steps", "5,25,100")
    dry = cli(*args, "--dry-run", url=gw.base_url)
    assert dry.returncode == 0, _clean(dry)
    assert "20% → 5%" in dry.stdout
    assert "nothing changed" in dry.stdout
    assert _plan(gw) is None

    declined = cli(*args, url=gw.base_url, stdin="n\n")
    assert declined.returncode == 1
    assert "Lower the live canary share of support-bot from 20% to 5%?" in declined.stderr
    assert "error: nothing changed" in declined.stderr
    no_terminal = cli(*args, url=gw.base_url)  # no input at all: no
    assert no_terminal.returncode == 1
    assert _plan(gw) is None

    accepted = cli(*args, url=gw.base_url, stdin="y\n")
    assert accepted.returncode == 0, _clean(accepted)
    assert _plan(gw)["plan"]["steps"] == [5.0, 25.0, 100.0]

    # Raising the share asks nothing; --yes skips the question when lowering.
    assert cli("rollout", "set", FLAG, "--steps", "50,100", url=gw.base_url).returncode == 0
    assert _plan(gw)["plan"]["steps"] == [50.0, 100.0]
    done = cli(*args, "--yes", url=gw.base_url)
    assert done.returncode == 0, _clean(done)
    assert _plan(gw)["plan"]["steps"] == [5.0, 25.0, 100.0]


def test_rollout_set_bad_steps_are_clean_errors_that_change_nothing(gw: GatewayServer) -> None:
    for steps, message in (("abc", "'abc' is not a number"), ("10,,100", "empty step"),
                           ("50,10,100", "steps must ascend"),
                           ("10,50", "last step must be 100")):  # fmt: skip
        done = cli("rollout", "set", FLAG, "--steps", steps, "--yes", url=gw.base_url)
        assert done.returncode == 2
        assert message in " ".join(_clean(done).split())
    assert _plan(gw) is None


def test_help_names_the_role_each_admin_command_needs() -> None:
    from typer.testing import CliRunner

    import cli as loopgate

    loopgate._register()
    roles = {
        ("flags", "list"): "viewer", ("flags", "kill"): "flag_editor",
        ("flags", "set-weights"): "flag_editor", ("experiments", "show"): "viewer",
        ("rollout", "status"): "viewer", ("rollout", "set"): "flag_editor",
        ("rollout", "resume"): "flag_editor", ("rollout", "remove"): "flag_editor",
        ("drift", "show"): "viewer", ("drift", "freeze"): "flag_editor",
    }  # fmt: skip
    for command, role in roles.items():
        done = CliRunner().invoke(loopgate.app, [*command, "--help"], env={"COLUMNS": "80"})
        text = " ".join(done.output.split())
        assert f"Role: {role}" in text, (command, text)
        assert "LOOPGATE_URL" in text
        assert "LOOPGATE_ADMIN_TOKEN" in text


# --- serve -------------------------------------------------------------------------------


def test_serve_on_a_taken_port_says_so_and_prints_no_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
        )  # fmt: skip
    out = _clean(done)
    assert done.returncode == 2, out
    assert f"127.0.0.1:{port} is already in use" in out
    assert "serving on" not in out


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """`loopgate serve --simulate` on embedded defaults: (url, token, its output so far)."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGATE_")}
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--simulate", "--port", str(port),
             "--log-level", "warning"],
            stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, "serve --simulate")
        text = log.read_text()
        match = re.search(r"export LOOPGATE_ADMIN_TOKEN=(\S+)", text)
        assert match, text
        yield url, match.group(1), text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_simulate_is_steerable_at_once(simulated: tuple[str, str, str]) -> None:
    url, token, output = simulated
    assert output.index("export LOOPGATE_ADMIN_TOKEN") < output.index("serving on")
    assert cli("flags", "list", url=url, token="wrong").returncode == 1
    done = cli("flags", "set-weights", FLAG, "control=0", "canary=100", url=url, token=token)
    assert done.returncode == 0, _clean(done)
    deadline = time.monotonic() + 10
    variants: set[str] = set()
    while time.monotonic() < deadline and variants != {"canary"}:
        answers = [
            httpx.post(url + "/v1/chat/completions", timeout=10,
                       json={"model": FLAG, "messages": [{"role": "user", "content": "hi"}],
                             "user": f"u{i}", "max_tokens": 4})
            for i in range(6)
        ]  # fmt: skip
        variants = {a.headers["x-loopgate-variant"] for a in answers}
    assert variants == {"canary"}
