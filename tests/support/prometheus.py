"""A real Prometheus (Debian's `prometheus` binary) scraping servers on loopback, for tests.

Fixture ``prometheus_factory(targets, rule_files=()) -> PrometheusServer``: writes a config
scraping each target's /metrics every second, starts the binary with its TSDB in tmp and
its web listener on a free loopback port, waits until it is ready; stopped by pid at teardown.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ports import free_port, wait_until


@dataclass
class PrometheusServer:
    """A running Prometheus and its HTTP API."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success answer."""
        url = f"{self.base_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            doc = json.loads(answer.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> bool:
        """True when every active target's last scrape succeeded."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(
    targets: Sequence[str], folder: Path, rule_files: Sequence[Path] = ()
) -> PrometheusServer:
    """Start Prometheus scraping `targets` (host:port) every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed (scripts/test installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "loopgate",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = folder / "prometheus.log"
    cmd = [
        binary, f"--config.file={config_path}", f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = PrometheusServer(port, proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{log_path.read_text(errors='replace')}")
        with urllib.request.urlopen(server.base_url + "/-/ready", timeout=1) as answer:
            return bool(answer.status == 200)

    try:
        wait_until(ready, 30, "prometheus", interval=0.2)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start Prometheus servers; each is stopped (by its pid) at teardown."""
    started: list[PrometheusServer] = []

    def factory(targets: Sequence[str], rule_files: Sequence[Path] = ()) -> PrometheusServer:
        server = start_prometheus(targets, tmp_path / f"prometheus-{len(started)}", rule_files)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()
