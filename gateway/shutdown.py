"""Graceful shutdown: on SIGTERM turn unready first, keep serving a moment, then drain.

Order on SIGTERM: /readyz answers 503 (load balancers stop sending), requests are still
served for `server.unready_seconds`, then uvicorn closes the listener and lets in-flight
requests and streams finish for up to `server.drain_seconds`; the lifespan then drains the
event queue to Kafka or the spool. A second signal skips the unready wait.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess


def mark_draining(app: Any) -> None:
    """Make /readyz answer 503 from now on (app: the FastAPI app, or anything wrapping it)."""
    for _ in range(8):  # HotPath, uvicorn's proxy-headers middleware, ...: a few layers at most
        runtime = getattr(getattr(app, "state", None), "runtime", None)
        if runtime is not None:
            runtime.readiness.drain()
            return
        app = getattr(app, "app", None)
        if app is None:
            return


class DrainingServer(uvicorn.Server):
    """uvicorn's server with an unready phase between SIGTERM and closing the listener."""

    def __init__(self, config: uvicorn.Config, unready_seconds: float) -> None:
        super().__init__(config)
        self.unready_seconds = unready_seconds
        self._close_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: unready, and schedule the close; a second one closes now."""
        # In a worker process config.app is the import string; loaded_app is the app itself.
        mark_draining(getattr(self.config, "loaded_app", None) or self.config.app)
        if self._close_at is None and self.unready_seconds > 0:
            # Runs in a signal handler: only set values; on_tick acts on them.
            self._close_at = time.monotonic() + self.unready_seconds
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 0.1 s tick: close the listener once the unready phase is over."""
        if self._close_at is not None and time.monotonic() >= self._close_at:
            self.should_exit = True
        return await super().on_tick(counter)


def serve(
    app: Any, unready_seconds: float, sock: socket.socket | None = None, **options: Any
) -> None:
    """uvicorn.run for one worker, with the unready phase; exits 3 if startup failed.

    `sock`: a socket the caller bound already (so it reports a taken port itself).
    """
    server = DrainingServer(uvicorn.Config(app, **options), unready_seconds)
    server.run(sockets=None if sock is None else [sock])
    if not server.started:
        sys.exit(3)


class DrainingSupervisor(Multiprocess):
    """uvicorn's worker supervisor with the unready phase for all workers at once.

    The first SIGTERM raises the drain flag (a file every worker's /readyz looks at), and
    the workers keep serving; `unready_seconds` later they get SIGTERM and drain as usual.
    """

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], unready_s: float, flag: Path
    ) -> None:
        super().__init__(config, sockets)
        self.unready_s = unready_s
        self.flag = flag
        self._close_at: float | None = None

    def handle_term(self) -> None:
        """First SIGTERM: unready; the second one, or the end of the phase, stops the workers."""
        if self._close_at is None and self.unready_s > 0:
            self.flag.touch()
            self._close_at = time.monotonic() + self.unready_s
            return
        super().handle_term()

    def handle_signals(self) -> None:
        """Called every 0.5 s by the supervisor's loop: also ends the unready phase."""
        super().handle_signals()
        if self._close_at is not None and time.monotonic() >= self._close_at:
            self._close_at = 0.0  # once
            super().handle_term()


def serve_workers(
    factory: str,
    workers: int,
    unready_seconds: float,
    flag: Path,
    sock: socket.socket | None = None,
    **options: Any,
) -> None:
    """uvicorn.run with `workers` processes and the unready phase (see DrainingSupervisor)."""
    config = uvicorn.Config(factory, factory=True, workers=workers, **options)
    sock = sock or config.bind_socket()
    try:
        DrainingSupervisor(config, [sock], unready_seconds, flag).run()
    finally:
        sock.close()
