"""A gateway without Kafka whose spool reaches its bound: it keeps answering and says so.

The spool is the sink here, bounded at (near) its minimum size; traffic past the bound is
refused by the spool, counted as dropped, shown by the spool gauges and logged clearly,
once per interval rather than once per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.gateway import GatewayServer, metric, pool
from tests.support.sim import SimServer

MAX_BYTES = 8192
SEGMENT_BYTES = 4096
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


def test_full_spool_keeps_the_gateway_answering_and_says_so(
    gateway_factory: Callable[..., GatewayServer], sim: SimServer, tmp_path: Path
) -> None:
    gw = gateway_factory(
        {
            "instance": "full",
            "pools": {"p": pool(sim.base_url, served_model="sim-model")},
            "models": {"m": {"pool": "p"}},
            "events": {
                "spool": {
                    "dir": str(tmp_path / "spool"),
                    "max_bytes": MAX_BYTES,
                    "segment_bytes": SEGMENT_BYTES,
                }
            },
        }
    )
    started = time.monotonic()
    with httpx.Client(base_url=gw.v1, timeout=10) as client:
        for _ in range(40):  # each completion event is ~1 kB: five times the bound
            answer = client.post("/chat/completions", json=BODY)
            assert answer.status_code == 200, answer.text
            feedback = client.post(
                "/feedback", json={"response_id": answer.json()["id"], "kind": "thumbs_up"}
            )
            assert feedback.status_code == 200, feedback.text

    def dropped() -> float:
        return metric(gw, "loopgate_events_dropped_total")

    deadline = time.monotonic() + 30
    while dropped() + metric(gw, "loopgate_events_spooled_total") < 80:
        assert time.monotonic() < deadline, "events neither spooled nor dropped"
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    assert dropped() > 40  # most of the 80 events did not fit
    assert metric(gw, "loopgate_spool_max_bytes") == MAX_BYTES
    spool_bytes = metric(gw, "loopgate_spool_bytes")
    assert MAX_BYTES - 1200 < spool_bytes <= MAX_BYTES  # filled up to the bound, not past it
    on_disk = sum(p.stat().st_size for p in (tmp_path / "spool" / "full").glob("*.jsonl"))
    assert on_disk == spool_bytes
    assert gw.get("/healthz")[0] == 200
    assert gw.get("/readyz")[0] == 200

    full = [line for line in gw.log().splitlines() if "is full" in line]
    assert full, "the log does not say the spool is full"
    assert "spool" in full[0]
    assert str(MAX_BYTES) in full[0]
    # Rate-limited (one line per 10 s at most), not one line per refused event.
    assert len(full) <= 1 + elapsed // 10
