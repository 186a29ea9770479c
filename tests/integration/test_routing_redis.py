"""Flags in real Redis shared by gateway processes: live changes, Redis away and back, workers.

Gateways run as `loopgate serve` subprocesses with `flags.source: redis`, seeded from a flag
file; the shared Redis on 127.0.0.1:6379 with a namespace of the test's own, or a private
redis-server that the test kills and restarts by pid.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.test_routing import (
    TOKEN,
    admin,
    expected_split,
    flag_doc,
    gateway_config,
    metric,
    poll,
    sims,
    write_flags,
)
from tests.support.gateway import GatewayServer
from tests.support.redis import RedisServer
from tests.support.sim import SimServer

__all__ = ["sims"]  # the module-scoped simulators fixture, shared with test_routing

KEY = "redis-bot"
DOC = flag_doc(KEY)
UNITS = [f"redis-user-{i}" for i in range(20)]
# A unit on control at 50/50 (it moves when the canary gets 100) and one on the canary.
ON_CONTROL = next(u for u in UNITS if expected_split(DOC, u) == "control")
ON_CANARY = next(u for u in UNITS if expected_split(DOC, u) == "canary")


def redis_config(
    sims: dict[str, SimServer], flags_path: Path, url: str, namespace: str
) -> dict[str, Any]:
    """Gateway config: flags from Redis under `namespace`, seeded from `flags_path`."""
    config = gateway_config(sims, flags_path)
    config["flags"] = {
        "source": "redis",
        "redis_url": url,
        "namespace": namespace,
        "seed_from_file": True,
        "path": str(flags_path),
        "admin_token": TOKEN,
        "redis_timeout": 0.5,
        "reconnect_max_delay": 0.5,
        "resync_interval": 5,
    }
    return config


def chat(base_url: str, unit: str, client: httpx.Client | None = None) -> str:
    """One chat request for `unit`; the variant header (raises on any failure)."""
    body = {"model": KEY, "messages": [{"role": "user", "content": "hi"}], "user": unit}
    if client is None:
        answer = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=10)
    else:
        answer = client.post(base_url + "/v1/chat/completions", json=body)
    answer.raise_for_status()
    return answer.headers["x-loopgate-variant"]


class Traffic:
    """A background thread sending requests to every gateway in turn, counting failures."""

    def __init__(self, gateways: list[GatewayServer]) -> None:
        self._gateways = gateways
        self._stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="routing-traffic", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                for number, gateway in enumerate(self._gateways):
                    unit = UNITS[(self.sent + number) % len(UNITS)]
                    try:
                        chat(gateway.base_url, unit, client)
                    except (httpx.HTTPError, KeyError) as exc:
                        self.failures.append(f"{gateway.port} {unit}: {exc!r}")
                    self.sent += 1
                time.sleep(0.005)

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        """Send requests while the block runs."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(15)


def _lands(
    gateway: GatewayServer, unit: str, variant: str, client: httpx.Client
) -> Callable[[], bool]:
    return lambda: chat(gateway.base_url, unit, client) == variant


def _stale(gateway: GatewayServer) -> Callable[[], bool]:
    return lambda: metric(gateway, "loopgate_flags_staleness_seconds") > 0


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    """The seed file: one 50/50 flag."""
    path = tmp_path / "flags.yaml"
    write_flags(path, DOC)
    return path


def test_a_change_through_one_gateway_is_applied_by_the_other_within_a_second(
    gateway_factory: Callable[..., GatewayServer],
    sims: dict[str, SimServer],
    flags_file: Path,
    redis_url: str,
    redis_namespace: str,
) -> None:
    config = redis_config(sims, flags_file, redis_url, redis_namespace)
    a, b = gateway_factory(config), gateway_factory(config)
    want = {u: expected_split(DOC, u) for u in UNITS}
    with httpx.Client() as http:
        for gateway in (a, b):
            assert {u: chat(gateway.base_url, u, http) for u in UNITS} == want

    with Traffic([a, b]).running() as traffic, httpx.Client(timeout=10) as http:
        chat(b.base_url, ON_CONTROL, http)  # the connection is open before the clock starts
        time.sleep(0.2)
        started = time.monotonic()
        admin(a, "POST", f"/{KEY}/weights", {"weights": {"control": 0, "canary": 100}}, http)
        poll(_lands(b, ON_CONTROL, "canary", http), 5, "the weight change on gateway B")
        weight_lag = time.monotonic() - started
        assert chat(a.base_url, ON_CONTROL, http) == "canary"

        started = time.monotonic()
        admin(a, "POST", f"/{KEY}/kill", {}, http)
        poll(_lands(b, ON_CANARY, "control", http), 5, "the kill on gateway B")
        kill_lag = time.monotonic() - started
        time.sleep(0.2)
    assert weight_lag < 1.0, weight_lag
    assert kill_lag < 1.0, kill_lag
    assert traffic.failures == []
    assert traffic.sent >= 20
    for gateway in (a, b):
        with httpx.Client() as http:
            assert {chat(gateway.base_url, u, http) for u in UNITS} == {"control"}
    print(f"propagation A->B: weights {weight_lag * 1000:.0f} ms, kill {kill_lag * 1000:.0f} ms")


def _flags_cli(redis: RedisServer, namespace: str, config: Path, *args: str) -> str:
    """`loopgate flags --redis ...` as a subprocess; its output (fails on a non-zero exit)."""
    cmd = [
        sys.executable, "-m", "cli", "flags", *args, "--redis", redis.url,
        "--namespace", namespace, "--config", str(config), "--as", "routing-test",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_redis_away_both_keep_serving_and_follow_again_when_it_returns(
    gateway_factory: Callable[..., GatewayServer],
    sims: dict[str, SimServer],
    flags_file: Path,
    redis_server: RedisServer,
) -> None:
    namespace = "away"
    config = redis_config(sims, flags_file, redis_server.url, namespace)
    a, b = gateway_factory(config), gateway_factory(config)
    gateways = [a, b]
    want = {u: expected_split(DOC, u) for u in UNITS}

    with Traffic(gateways).running() as traffic:
        time.sleep(0.2)
        redis_server.stop()
        for gateway in gateways:
            poll(_stale(gateway), 5, "staleness after Redis stopped")
        first = [metric(g, "loopgate_flags_staleness_seconds") for g in gateways]
        time.sleep(0.6)
        # The last flags keep serving: the same assignments on both gateways.
        with httpx.Client() as http:
            for gateway in gateways:
                assert {u: chat(gateway.base_url, u, http) for u in UNITS} == want
        later = [metric(g, "loopgate_flags_staleness_seconds") for g in gateways]
        assert all(l2 >= l1 + 0.5 for l1, l2 in zip(first, later, strict=True)), (first, later)
        # A change cannot be made meanwhile: 503, nothing half-applied.
        with httpx.Client(base_url=a.base_url, timeout=10) as http:
            refused = http.post(
                f"/admin/flags/{KEY}/kill", json={}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "flag_store_unavailable"

        redis_server.start()
        # Made in the store itself, not through a gateway.
        out = _flags_cli(redis_server, namespace, a.config_path, "kill", KEY)
        assert KEY in out
        started = time.monotonic()
        with httpx.Client(timeout=10) as http:
            for gateway in gateways:
                landed = _lands(gateway, ON_CANARY, "control", http)
                poll(landed, 10, f"the kill on gateway {gateway.port}")
        print(f"kill after Redis returned seen by both in {time.monotonic() - started:.2f} s")
    assert traffic.failures == []
    for gateway in gateways:
        assert metric(gateway, "loopgate_flags_staleness_seconds") == 0
        listed = admin(gateway, "GET", "")
        assert [(f["key"], f["killed"], f["version"]) for f in listed["data"]] == [(KEY, True, 2)]


# -- several workers ----------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _worker_of_connections(server_port: int, pids: set[int]) -> dict[int, int]:
    """Client port -> pid of the process holding the server side of that connection."""
    inode_to_client: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == server_port and fields[3] == "01":  # ESTABLISHED
            inode_to_client[fields[9]] = int(fields[2].rpartition(":")[2], 16)
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else None
            if inode in inode_to_client:
                owner[inode_to_client[inode]] = pid
    return owner


def _variant_on(conn: http.client.HTTPConnection, unit: str) -> str:
    body = {"model": KEY, "messages": [{"role": "user", "content": "hi"}], "user": unit}
    conn.request(
        "POST", "/v1/chat/completions", orjson.dumps(body), {"Content-Type": "application/json"}
    )
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200
    variant = answer.getheader("x-loopgate-variant")
    assert variant is not None
    return variant


def _conn_lands(conn: http.client.HTTPConnection, unit: str, variant: str) -> Callable[[], bool]:
    return lambda: _variant_on(conn, unit) == variant


def test_workers_assign_identically_and_all_follow_a_kill(
    gateway_factory: Callable[..., GatewayServer],
    sims: dict[str, SimServer],
    flags_file: Path,
    redis_url: str,
    redis_namespace: str,
) -> None:
    gateway = gateway_factory(redis_config(sims, flags_file, redis_url, redis_namespace), workers=2)
    workers = _descendants(gateway.proc.pid)
    # Keep-alive connections until both workers hold at least one (the kernel picks).
    by_worker: dict[int, http.client.HTTPConnection] = {}
    opened: list[http.client.HTTPConnection] = []
    try:
        for _ in range(64):
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            opened.append(conn)
            _variant_on(conn, UNITS[0])
            owners = _worker_of_connections(gateway.port, workers)
            client_port = conn.sock.getsockname()[1]
            by_worker.setdefault(owners[client_port], conn)
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, f"every connection went to one worker of {workers}"

        want = {u: expected_split(DOC, u) for u in UNITS}
        for conn in by_worker.values():
            assert {u: _variant_on(conn, u) for u in UNITS} == want

        started = time.monotonic()
        admin(gateway, "POST", f"/{KEY}/kill", {})
        for conn in by_worker.values():
            poll(_conn_lands(conn, ON_CANARY, "control"), 5, "the kill on every worker")
        assert time.monotonic() - started < 1.0
        for conn in by_worker.values():
            assert {_variant_on(conn, u) for u in UNITS} == {"control"}
    finally:
        for conn in opened:
            conn.close()
