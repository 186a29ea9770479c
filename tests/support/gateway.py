"""Start `loopgate serve` as a subprocess from a config dict, on a free port; stop it by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.clients import LocalServer
from tests.support.ports import free_port, wait_until


@dataclass(kw_only=True)
class GatewayServer(LocalServer):
    """A running gateway process and the ways a test talks to it."""

    config_path: Path

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a gateway path; returns (status, body) whatever the status."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


def start_gateway(
    config: dict[str, Any],
    folder: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> GatewayServer:
    """Write the config, start the gateway, wait until /healthz answers."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"gateway-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = folder / f"gateway-{port}.log"
    cmd = [
        sys.executable, "-m", "cli", "serve", "--config", str(config_path),
        "--port", str(port), "--workers", str(workers), "--log-level", "warning",
        *(extra_args or []),
    ]  # fmt: skip
    run_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env, cwd=folder)
    server = GatewayServer(port=port, proc=proc, config_path=config_path, log_path=log_path)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{server.log()}")
        return server.get("/healthz")[0] == 200

    try:
        wait_until(healthy, 30, "gateway")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


def pool(*urls: str, served_model: str, **timeouts: float) -> dict[str, Any]:
    """A pool section for a config dict."""
    section: dict[str, Any] = {"endpoints": list(urls), "served_model": served_model}
    if timeouts:
        section["timeouts"] = timeouts
    return section


@contextmanager
def _gateways(folder: Path) -> Iterator[Callable[..., GatewayServer]]:
    started: list[GatewayServer] = []

    def factory(config: dict[str, Any], **kwargs: Any) -> GatewayServer:
        server = start_gateway(config, folder, **kwargs)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    """Start gateways from config dicts; every one started is stopped at teardown."""
    with _gateways(tmp_path) as factory:
        yield factory


@pytest.fixture(scope="module")
def module_gateway_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., GatewayServer]]:
    """Like gateway_factory, for gateways shared by the tests of one module."""
    with _gateways(tmp_path_factory.mktemp("gateway")) as factory:
        yield factory


def metric(gateway: GatewayServer, name: str) -> float:
    """One unlabelled sample from the gateway's /metrics."""
    status, body = gateway.get("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rpartition(" ")[2])
    raise KeyError(name)


def poll(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds until `check` holds; fails the test after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} not seen within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started
