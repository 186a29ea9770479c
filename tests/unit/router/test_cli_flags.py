"""`loopgate flags ...` against a flag file directly and against a live admin API."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner

from cli.flags import register
from gateway.errors import install_error_handlers
from gateway.routes.admin_flags import admin_flags_router
from router.config import FlagsConfig
from router.stores import FileFlagStore, dump_flags, parse_flags
from tests.support.ports import free_port, port_open, wait_until
from tests.unit.router.conftest import POOLS, make_flag

TOKEN = "cli-token"


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root."""

    register(app)
    return app


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(_cli(), ["flags", *args], env=env)
    return result.exit_code, result.output


@pytest.fixture
def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.yaml"
    path.write_text(dump_flags([make_flag()]))
    return path


def _pools_config(tmp_path: Path) -> Path:
    # The pools the store validates against come from a gateway config.
    config = tmp_path / "gateway.yaml"
    pools = "".join(
        f"  {p}: {{endpoints: ['http://127.0.0.1:1'], served_model: {p}}}\n" for p in sorted(POOLS)
    )
    config.write_text(f"pools:\n{pools}")
    return config


def test_direct_file_commands(flag_file: Path, tmp_path: Path) -> None:
    base = ["--file", str(flag_file), "--config", str(_pools_config(tmp_path)), "--as", "ana"]
    code, out = _invoke("list", *base)
    assert code == 0, out
    assert "support-bot" in out
    assert "control 90%" in out

    code, out = _invoke("set-weights", *base, "support-bot", "control=50", "canary=50")
    assert code == 0, out
    assert "version 2" in out
    assert parse_flags(flag_file.read_text(), POOLS, "f")["support-bot"].variants[1].weight == 50

    code, out = _invoke("kill", *base, "support-bot")
    assert code == 0, out
    assert "killed" in out
    code, out = _invoke("explain", *base, "support-bot", "user-1")
    assert code == 0, out
    assert "control" in out
    assert "kill_switch" in out

    code, out = _invoke("unkill", *base, "support-bot", "--expected-version", "2")
    assert code == 1
    assert "you stated version 2, the store has version 3" in out

    code, out = _invoke("set-weights", *base, "support-bot", "ghost=1")
    assert code == 1
    assert "no variant 'ghost'" in out

    incoming = tmp_path / "incoming.yaml"
    incoming.write_text(dump_flags([make_flag(), make_flag("new-bot")]))
    code, out = _invoke("apply", *base, str(incoming))
    assert code == 0, out
    assert "update" in out
    assert "create" in out
    code, out = _invoke("apply", *base, str(incoming))
    assert out.count("unchanged") == 2


@pytest.fixture
def gateway_url(flag_file: Path) -> Iterator[str]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with FileFlagStore.open(flag_file, POOLS, lambda r: None) as store:
            app.state.runtime = SimpleNamespace(flags=store)
            yield

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(admin_flags_router())
    app.state.settings = SimpleNamespace(flags=FlagsConfig(admin_token=TOKEN))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="admin-api", daemon=True)
    thread.start()
    wait_until(lambda: port_open(port), 10, "admin API")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_commands_against_a_running_gateway(gateway_url: str, tmp_path: Path) -> None:
    env = {"LOOPGATE_ADMIN_TOKEN": TOKEN}
    code, out = _invoke("list", "--url", gateway_url, env={"LOOPGATE_ADMIN_TOKEN": "wrong"})
    assert code == 1
    assert "401" in out

    code, out = _invoke("set-weights", "--url", gateway_url, "support-bot", "canary=100", env=env)
    assert code == 0, out
    code, out = _invoke("show", "--url", gateway_url, "support-bot", env=env)
    assert code == 0, out
    assert "version 2" in out
    code, out = _invoke("kill", "--url", gateway_url, "support-bot", env=env)
    assert code == 0, out
    code, out = _invoke("explain", "--url", gateway_url, "support-bot", "u1", env=env)
    assert "kill_switch" in out
    incoming = tmp_path / "incoming.yaml"
    incoming.write_text(dump_flags([make_flag("new-bot")]))
    code, out = _invoke("apply", "--url", gateway_url, str(incoming), env=env)
    assert code == 0, out
    assert "create" in out
    code, out = _invoke("show", "--url", gateway_url, "nope", env=env)
    assert code == 1
    assert "404" in out
