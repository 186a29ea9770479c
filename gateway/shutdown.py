"""Graceful shutdown: on SIGTERM turn unready first, keep serving a moment, then drain.

Order on SIGTERM: /readyz answers 503 (load balancers stop sending), requests are still
served for `server.unready_seconds`, then uvicorn closes the listener and lets in-flight
requests and streams finish for up to `server.drain_seconds`; the lifespan then drains the
event queue to Kafka or the spool. A second signal skips the unready wait.
"""

from __future__ import annotations

import sys
import time
from types import FrameType
from typing import Any

import uvicorn


def mark_draining(app: Any) -> None:
    """Make /readyz answer 503 from now on (app: the FastAPI app or the HotPath around it)."""
    inner = getattr(app, "app", app)
    runtime = getattr(getattr(inner, "state", None), "runtime", None)
    if runtime is not None:
        runtime.ready = False


class DrainingServer(uvicorn.Server):
    """uvicorn's server with an unready phase between SIGTERM and closing the listener."""

    def __init__(self, config: uvicorn.Config, unready_seconds: float) -> None:
        super().__init__(config)
        self.unready_seconds = unready_seconds
        self._close_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: unready, and schedule the close; a second one closes now."""
        mark_draining(self.config.app)
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


def serve(app: Any, unready_seconds: float, **options: Any) -> None:
    """uvicorn.run for one worker, with the unready phase; exits 3 if startup failed."""
    server = DrainingServer(uvicorn.Config(app, **options), unready_seconds)
    server.run()
    if not server.started:
        sys.exit(3)
