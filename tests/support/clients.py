"""A server process a test started, and the openai clients it hands out.

Clients are owned by the server: one per settings, all closed when it stops. A client
dropped without close() leaves keep-alive sockets for the garbage collector, and the
ResourceWarning that follows is an error in this test run (filterwarnings = error).
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import openai


class ClientCache:
    """Sync openai clients for one base URL, reused per settings and closed together."""

    def __init__(self) -> None:
        self._clients: dict[str, openai.OpenAI] = {}

    def get(self, base_url: str, **kwargs: Any) -> openai.OpenAI:
        """The client for these settings, made on first use."""
        key = repr(sorted(kwargs.items()))
        client = self._clients.get(key)
        if client is None or client.is_closed():  # a test may close what it was given
            client = self._clients[key] = openai.OpenAI(base_url=base_url, **kwargs)
        return client

    def close(self) -> None:
        """Close every client handed out."""
        for client in self._clients.values():
            if not client.is_closed():
                client.close()
        self._clients.clear()


@dataclass(kw_only=True)
class LocalServer:
    """A process serving HTTP on a loopback port, started by a test and stopped by its pid."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    clients: ClientCache = field(default_factory=ClientCache)

    api_key: ClassVar[str] = "test-key"
    stop_timeout: ClassVar[float] = 15.0

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        """Where the openai SDK points."""
        return self.base_url + "/v1"

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """A sync openai client without retries, so each error is seen once (one per settings)."""
        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        return self.clients.get(self.v1, **kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """An async openai client without retries; its user closes it (on its own loop)."""
        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        return openai.AsyncOpenAI(base_url=self.v1, **kwargs)

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Signal the process and wait for it; returns its exit code."""
        self.clients.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
