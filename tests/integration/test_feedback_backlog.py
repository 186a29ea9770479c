"""Feedback the event pipeline cannot take is refused (503, retry), never accepted and dropped.

A gateway without Kafka, its spool buffer small and its spool writer lingering a second: one
batch of judgements fills the buffer faster than the writer empties it. What the pipeline
can take is recorded, the rest of the batch is refused item by item, a single call and a
whole batch right after are refused with Retry-After, and every recorded judgement is in the
spool: the loss counter stays 0 (issue 19: a benchmark's batch route dropped a quarter of
what it had accepted).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.auth import hash_secret
from gateway.ids import Claims, ResponseIdSigner
from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, metric, poll, pool
from tests.support.sim import SimServer

KEY = "lgk-backlog-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
IDS_KEY = "b" * 40
SPOOL_BUFFER = 40


def test_a_backlogged_pipeline_refuses_feedback_and_loses_none(
    gateway_factory: Callable[..., GatewayServer], sim: SimServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    gw = gateway_factory(
        {
            "pools": {"p": pool(sim.base_url, served_model="sim-model")},
            "models": {"assistant": {"pool": "p"}},
            "ids": {"keys": [IDS_KEY], "max_age_s": 3600},
            "auth": {"keys": [{"hash": hash_secret(KEY), "app_id": "shop"}]},
            "events": {
                "spool": {"dir": str(spool)},
                "spool_buffer": SPOOL_BUFFER,
                "queue_size": 10,
                "linger_s": 1.0,
            },
        }
    )
    signer = ResponseIdSigner([IDS_KEY.encode()])
    rid = signer.sign(Claims("assistant", "a", 3, "shop", "u" * 32, int(time.time()), "n-1"))
    items = [{"response_id": rid, "kind": "rating", "value": i % 5 + 1} for i in range(60)]

    batch = httpx.post(
        gw.base_url + "/v1/feedback/batch", json={"items": items}, headers=AUTH, timeout=10
    )
    single = httpx.post(
        gw.base_url + "/v1/feedback",
        json={"response_id": rid, "kind": "thumbs_up"},
        headers=AUTH,
        timeout=10,
    )
    again = httpx.post(
        gw.base_url + "/v1/feedback/batch", json={"items": items}, headers=AUTH, timeout=10
    )

    assert batch.status_code == 200, batch.text
    answer = batch.json()
    statuses = [result["status"] for result in answer["data"]]
    # Taken while more than a tenth of the buffer is left (kept for completion events).
    taken = SPOOL_BUFFER - SPOOL_BUFFER // 10
    assert statuses == [200] * taken + [503] * (len(items) - taken)
    assert answer["recorded"] == taken
    refused = answer["data"][-1]["error"]
    assert refused["code"] == "events_backlogged"
    assert refused["type"] == "server_error"
    assert "try again" in refused["message"]

    assert single.status_code == 503, single.text
    assert single.headers["retry-after"] == "1"
    assert single.json()["error"]["code"] == "events_backlogged"
    # A whole batch while backlogged: refused before it is parsed, as one 503.
    assert again.status_code == 503, again.text
    assert again.headers["retry-after"] == "1"
    assert again.json()["error"]["code"] == "events_backlogged"

    poll(lambda: metric(gw, "loopgate_events_spooled_total") >= taken, 20, "the taken spooled")
    assert metric(gw, "loopgate_events_dropped_total") == 0
    later = httpx.post(  # drained: taken again
        gw.base_url + "/v1/feedback",
        json={"response_id": rid, "kind": "thumbs_down"},
        headers=AUTH,
        timeout=10,
    )
    assert later.status_code == 200, later.text
    gw.stop()

    kept = [e for e in spooled_events(spool) if e["type"] == "feedback"]
    recorded_ids = {r["feedback"]["id"] for r in answer["data"] if r["status"] == 200}
    assert {e["event_id"] for e in kept} == recorded_ids | {later.json()["id"]}
    assert json.dumps(kept).count('"thumbs_up"') == 0  # the refused call left nothing
