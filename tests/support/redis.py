"""Redis for tests: the shared server with a private namespace, or a private server to stop."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.support.ports import free_port, port_open, wait_until

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_url() -> str:
    """The shared Redis on 127.0.0.1:6379 (other engineers' tests use it too)."""
    return SHARED_REDIS_URL


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A key namespace of this test's own; every key under it is deleted afterwards."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield namespace
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class RedisServer:
    """A redis-server of the test's own on a free port, which the test may stop and restart."""

    port: int = field(default_factory=free_port)
    # With a directory, every write is fsync'd to an append-only file there, so a restart
    # (even after a kill) comes back with the same data.
    data_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Connection URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server on the same port; persistent only with data_dir."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        persistence = ["--appendonly", "no"]
        if self.data_dir is not None:
            persistence = [
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Kill this server (only this pid) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, persistent redis-server, killed at the end of the test."""
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    server = RedisServer(data_dir=data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
