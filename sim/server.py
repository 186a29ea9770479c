"""Run a simulator as a process: `loopgate sim` ends up here."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping

from sim.app import create_sim_app, start_sim
from sim.profile import SimProfile


async def serve_sim(
    host: str,
    port: int,
    profile: SimProfile,
    served_model: str,
    adapters: Mapping[str, str] | None = None,
    history: int = 256,
) -> None:
    """Serve until SIGINT or SIGTERM, then close connections and return."""
    app = create_sim_app(profile, served_model, adapters=adapters, history=history)
    runner = await start_sim(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"loopgate sim: {served_model} ({profile.style}) on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_sim(
    host: str,
    port: int,
    profile: SimProfile,
    served_model: str,
    adapters: Mapping[str, str] | None = None,
    history: int = 256,
) -> None:
    """Block serving one simulator, on uvloop when it is installed."""
    main = serve_sim(host, port, profile, served_model, adapters, history)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
