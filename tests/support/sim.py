"""Start `loopgate sim` processes on free loopback ports for tests; stop exactly those pids.

Fixtures (registered in tests/conftest.py):

- ``sim_factory(**options) -> SimServer``: start a simulator, function-scoped. Options are
  the CLI's, snake_case: ``model``, ``style``, ``ttft``, ``itl``, ``output_tokens``,
  ``error_rate``, ``midstream_error_rate``, ``stall_rate``, ``max_num_seqs``,
  ``max_model_len``, ``jitter``, ``seed``, ``lora`` (a list of ``NAME`` or ``NAME=STYLE``),
  ``history``. Unset latency options default to zero (``FAST``) so tests stay quick.
- ``sim_factory_session``: the same, shared by a whole session; reset() between uses.
- ``sim``: one zero-latency simulator serving ``sim-model``.

A ``SimServer`` has ``base_url``, ``v1`` (for the openai SDK), ``port``, ``pid``, ``model``,
and helpers ``client()``, ``requests()``, ``last_request()``, ``stats()``, ``reset()``,
``metrics()`` (parsed samples) and ``wait_stats(**at_least)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from tests.support.clients import LocalServer
from tests.support.ports import free_port, wait_until

# Defaults for tests: answers at once, short, and unjittered, so assertions are exact.
FAST: dict[str, Any] = {"ttft": 0.0, "itl": 0.0, "output_tokens": 16, "jitter": 0.0}

SimFactory = Callable[..., "SimServer"]


@dataclass(kw_only=True)
class SimServer(LocalServer):
    """A running simulator process and the ways a test talks to it."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)

    api_key: ClassVar[str] = "sim"
    stop_timeout: ClassVar[float] = 10.0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One HTTP call to the simulator; returns (status, body) whatever the status."""
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    def _json(self, method: str, path: str) -> Any:
        status, body = self.call(method, path)
        assert status == 200, (path, status, body)
        return orjson.loads(body)

    def requests(self) -> list[dict[str, Any]]:
        """Requests received, oldest first: method, path, headers (lowercase), body, outcome."""
        entries: list[dict[str, Any]] = self._json("GET", "/sim/requests")["requests"]
        return entries

    def last_request(self) -> dict[str, Any]:
        """The most recent request the simulator received."""
        entries = self.requests()
        assert entries, "the simulator has received no request"
        return entries[-1]

    def stats(self) -> dict[str, Any]:
        """Counters (received, completed, cancelled, errors, rejected, stalled) and load."""
        stats: dict[str, Any] = self._json("GET", "/sim/stats")
        return stats

    def wait_stats(self, timeout: float = 10, **at_least: int) -> dict[str, Any]:
        """Poll /sim/stats until each named counter reaches its value; return the stats."""
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.stats())
            return all(seen.get(name, 0) >= value for name, value in at_least.items())

        try:
            wait_until(reached, timeout, f"sim stats {at_least}")
        except TimeoutError as err:
            raise AssertionError(f"sim stats {at_least} not reached; last {seen}") from err
        return seen

    def reset(self) -> None:
        """Forget recorded requests, counters and metrics; restart the fault sequence."""
        status, body = self.call("POST", "/sim/reset")
        assert status == 200, body

    def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value}, e.g. 'vllm:num_requests_running{...}'."""
        status, body = self.call("GET", "/metrics")
        assert status == 200, body
        samples: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric(self, name: str) -> float:
        """The value of the first sample whose name (before its labels) is `name`."""
        for key, value in self.metrics().items():
            if key.split("{", 1)[0] == name:
                return value
        raise KeyError(name)


def _args(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        for item in value if isinstance(value, list | tuple) else [value]:
            args += [flag, str(item)]
    return args


def start_sim(folder: Path, **options: Any) -> SimServer:
    """Start `loopgate sim` with CLI options (FAST unless given); wait until /health answers."""
    options = {"model": "sim-model", **FAST, **options}
    port = free_port()
    log_path = folder / f"sim-{port}.log"
    cmd = [sys.executable, "-m", "cli", "sim", "--port", str(port), *_args(options)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = SimServer(
        port=port, proc=proc, model=str(options["model"]), log_path=log_path, options=options
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"loopgate sim exited with {proc.returncode}:\n{server.log()}")
        return server.call("GET", "/health")[0] == 200

    try:
        wait_until(healthy, 30, "loopgate sim")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


class _Launcher:
    """Starts simulators into one folder and stops exactly the ones it started."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[SimServer] = []

    def __call__(self, **options: Any) -> SimServer:
        server = start_sim(self.folder, **options)
        self.started.append(server)
        return server

    def close(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[SimFactory]:
    """Start simulators for one test: ``sim_factory(style="formal", error_rate=0.5)``."""
    launcher = _Launcher(tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture(scope="session")
def sim_factory_session() -> Iterator[SimFactory]:
    """Start simulators shared by the session; call ``reset()`` before relying on counters."""
    with tempfile.TemporaryDirectory(prefix="loopgate-sim-") as folder:
        launcher = _Launcher(Path(folder))
        yield launcher
        launcher.close()


@pytest.fixture
def sim(sim_factory: SimFactory) -> SimServer:
    """One zero-latency simulator serving ``sim-model`` in the concise style."""
    return sim_factory()
