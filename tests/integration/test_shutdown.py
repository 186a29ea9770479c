"""SIGTERM during a stream: unready first, the stream completes, the event is kept, exit 0."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedback.sinks.spool import SEGMENT_SUFFIX
from tests.support.gateway import GatewayServer, pool
from tests.support.ports import wait_until
from tests.support.sim import SimServer

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "tell me a story"}],
    "stream": True,
    "max_tokens": 30,
}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_a_stream(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
    workers: int,
) -> None:
    sim = sim_factory(itl=0.06, output_tokens=30)  # about 2 s of streaming
    spool = tmp_path / "spool"
    gw = gateway_factory(
        {
            "server": {"unready_seconds": 1.0, "drain_seconds": 20},
            "pools": {"p": pool(sim.base_url, served_model="sim-model")},
            "models": {"m": {"pool": "p"}},
            "events": {"spool": {"dir": str(spool)}},
            "balancer": {"health_interval_s": 0},
        },
        workers=workers,
    )
    assert gw.get("/readyz")[0] == 200
    chunks: list[bytes] = []
    started = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", gw.v1 + "/chat/completions", json=BODY, timeout=30) as r:
                for chunk in r.iter_bytes():
                    chunks.append(chunk)
                    started.set()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
            started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(15)
    gw.proc.send_signal(signal.SIGTERM)
    # Unready first, while the listener still answers.
    wait_until(lambda: gw.get("/readyz")[0] == 503, 1.0, "unready after SIGTERM")
    reader.join(30)
    assert not errors, errors
    body = b"".join(chunks)
    assert body.rstrip().endswith(b"data: [DONE]")
    assert gw.proc.wait(30) == 0
    events: list[dict[str, Any]] = []
    for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")):
        events += [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    completions = [e for e in events if e["type"] == "completion"]
    assert len(completions) == 1
    assert completions[0]["body"]["status"] == "ok"
    assert completions[0]["body"]["finish_reason"] in {"stop", "length"}
