"""/v1/feedback through real processes: answers get signed ids, feedback on them becomes events.

The gateway here has no Kafka, so events land in its spool; read after the gateway stops
(which drains the pipeline). The Kafka path is tested in tests/integration/test_events_kafka.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from feedback.privacy import open_event
from feedback.privacy.file_store import FileKeyStore
from feedback.privacy.keys import KeyCache
from feedback.schema import SCHEMA_DIR
from feedback.sinks.spool import SEGMENT_SUFFIX
from gateway.auth import hash_secret
from gateway.ids import Claims, ResponseIdSigner
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

KEY = "k" * 40
MESSAGES: list[Any] = [{"role": "user", "content": "my email is jane.doe@example.com, help"}]


@pytest.fixture
def setup(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> tuple[GatewayServer, Path]:
    """A gateway over one simulator, with a known signing key and its own spool."""
    sim = sim_factory(model="policy-a")
    spool = tmp_path / "spool"
    config = {
        "instance": "feedback-test",
        "pools": {"a": pool(sim.base_url, served_model="policy-a")},
        "models": {"assistant": {"pool": "a"}},
        "ids": {"keys": [KEY], "max_age_s": 3600},
        "events": {"spool": {"dir": str(spool)}},
    }
    return gateway_factory(config), spool


def _events(spool: Path) -> list[dict[str, Any]]:
    """The spooled events, content opened with the keys beside the spool (sealed on disk)."""
    lines = []
    for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")):
        lines.extend(line for line in path.read_bytes().splitlines() if line.strip())
    keys = FileKeyStore(spool.parent / "keys", KeyCache(1000, 60))
    return [open_event(json.loads(line), keys) for line in lines]


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{kind}.json").read_text())
    return schema


def _feedback(gw: GatewayServer, **body: Any) -> httpx.Response:
    return httpx.post(gw.v1 + "/feedback", json=body, timeout=10)


def test_answer_then_feedback_become_linked_events(setup: tuple[GatewayServer, Path]) -> None:
    gw, spool = setup
    answer = gw.client().chat.completions.create(model="assistant", messages=MESSAGES, user="u1")
    assert answer.id.startswith("lg1.")
    down = _feedback(gw, response_id=answer.id, kind="thumbs_down")
    edit = _feedback(gw, response_id=answer.id, kind="edit", edited_text="A better answer.")
    assert down.status_code == 200, down.text
    assert down.json()["recorded"] is True
    assert down.json()["flag"] == "assistant"
    assert edit.json()["recorded"] is True
    assert gw.stop() == 0

    events = _events(spool)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
        jsonschema.validate(event, _schema(event["type"]))
    (completion,) = by_type["completion"]
    assert completion["body"]["response_id"] == answer.id
    assert completion["body"]["variant"] == "a"
    text = json.dumps(completion)
    assert "jane.doe@example.com" not in text  # redacted before it left the process
    kinds = sorted(e["body"]["kind"] for e in by_type["feedback"])
    assert kinds == ["edit", "thumbs_down"]
    for event in by_type["feedback"]:
        assert event["body"]["response_id"] == answer.id
        assert event["body"]["unit_hash"] == completion["body"]["unit_hash"]


def test_forged_tampered_expired_and_foreign_ids_are_refused(
    setup: tuple[GatewayServer, Path],
) -> None:
    gw, spool = setup
    answer = gw.client().chat.completions.create(model="assistant", messages=MESSAGES)
    signer = ResponseIdSigner([KEY.encode()])
    old = Claims("assistant", "a", 0, "default", "u", int(time.time()) - 7200, "n" * 8)
    foreign = Claims("assistant", "a", 0, "other-app", "u", int(time.time()), "n" * 8)
    prefix, payload, mac = answer.id.split(".")
    tampered = f"{prefix}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{mac}"
    forged = ResponseIdSigner([b"x" * 40]).sign(foreign)
    cases = {
        "lg1.bm9wZQ.bm9wZQ": (400, "invalid_response_id"),
        tampered: (400, None),
        forged: (400, None),
        signer.sign(old): (400, "response_id_expired"),
        signer.sign(foreign): (403, None),
        "not-an-id": (400, None),
    }
    for response_id, (status, code) in cases.items():
        answer_ = _feedback(gw, response_id=response_id, kind="thumbs_up")
        assert answer_.status_code == status, (response_id, answer_.text)
        error = answer_.json()["error"]
        assert error["type"] in {"invalid_request_error", "permission_error"}
        if code:
            assert error["code"] == code
    assert gw.stop() == 0
    assert [e["type"] for e in _events(spool)] == ["completion"]


def test_pii_in_names_ids_keys_and_numbers_never_reaches_the_spool(
    setup: tuple[GatewayServer, Path],
) -> None:
    gw, spool = setup
    pii = ["alice.pii@example.com", "4111 1111 1111 1111", "123-45-6789", "de89370400440532013000"]
    answer = gw.client().chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "name": pii[0], "content": "hi"}],
        metadata={"name": pii[1], "id": pii[2], "type": pii[3]},
        seed=4111111111111111,
    )
    sent = _feedback(
        gw,
        response_id=answer.id,
        kind="report",
        category=pii[0],
        idempotency_key=pii[2],
        metadata={pii[0]: 1, "name": pii[3], "id": 4155552671},
    )
    assert sent.status_code == 200, sent.text
    assert gw.stop() == 0
    raw = "\n".join(json.dumps(event) for event in _events(spool))
    assert [e["type"] for e in _events(spool)] == ["completion", "feedback"]
    squeezed = raw.replace(" ", "").replace("-", "").lower()
    for value in [*pii, "4111111111111111", "4155552671"]:
        assert value.replace(" ", "").replace("-", "").lower() not in squeezed, value


def test_a_repeated_idempotency_key_is_recorded_once(setup: tuple[GatewayServer, Path]) -> None:
    gw, spool = setup
    answer = gw.client().chat.completions.create(model="assistant", messages=MESSAGES)
    outcomes = [
        _feedback(gw, response_id=answer.id, kind="thumbs_up", idempotency_key="click-1").json()
        for _ in range(3)
    ]
    assert [o["recorded"] for o in outcomes] == [True, False, False]
    assert [o["duplicate"] for o in outcomes] == [False, True, True]
    assert gw.stop() == 0
    assert sum(e["type"] == "feedback" for e in _events(spool)) == 1


def test_a_respelled_id_is_refused_and_recorded_never(setup: tuple[GatewayServer, Path]) -> None:
    gw, spool = setup
    answer = gw.client().chat.completions.create(model="assistant", messages=MESSAGES)
    # The MAC's last character has 4 unused bits: these spellings decode to the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    base = alphabet.index(answer.id[-1]) & ~0b1111
    spellings = [answer.id[:-1] + alphabet[base + low] for low in range(16)]
    assert answer.id in spellings
    outcomes = [
        _feedback(gw, response_id=rid, kind="thumbs_up", idempotency_key="click-1")
        for rid in spellings
    ]
    assert sorted(o.status_code for o in outcomes) == [200] + [400] * 15
    refused = next(o for o in outcomes if o.status_code == 400)
    assert refused.json()["error"]["code"] == "invalid_response_id"
    assert gw.stop() == 0
    assert [e["body"]["response_id"] for e in _events(spool) if e["type"] == "feedback"] == [
        answer.id
    ]


def test_feedback_that_does_not_fit_its_kind_is_refused(setup: tuple[GatewayServer, Path]) -> None:
    gw, _ = setup
    answer = gw.client().chat.completions.create(model="assistant", messages=MESSAGES)
    for body in (
        {"kind": "rating"},
        {"kind": "rating", "value": 9},
        {"kind": "edit"},
        {"kind": "report"},
        {"kind": "nonsense"},
        {"kind": "thumbs_up", "surprise": 1},
    ):
        refused = _feedback(gw, response_id=answer.id, **body)
        assert refused.status_code == 422, body
        assert refused.json()["error"]["type"] == "invalid_request_error"


def test_a_batch_records_the_good_items_and_explains_the_bad(
    setup: tuple[GatewayServer, Path],
) -> None:
    gw, spool = setup
    answer = gw.client().chat.completions.create(model="assistant", messages=MESSAGES)
    items = [
        {"response_id": answer.id, "kind": "rating", "value": 4},
        {"response_id": "lg1.bm9wZQ.bm9wZQ", "kind": "thumbs_up"},
        {"response_id": answer.id, "kind": "report", "category": "privacy"},
    ]
    result = httpx.post(gw.v1 + "/feedback/batch", json={"items": items}, timeout=10).json()
    assert [item["status"] for item in result["data"]] == [200, 400, 200]
    assert result["recorded"] == 2
    assert result["data"][1]["error"]["code"] == "invalid_response_id"
    metrics = gw.get("/metrics")[1].decode()
    assert 'loopgate_feedback_total{flag="assistant",kind="rating",variant="a"} 1.0' in metrics
    assert gw.stop() == 0
    assert sum(e["type"] == "feedback" for e in _events(spool)) == 2


def test_an_app_set_to_consent_none_leaves_metadata_only(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    sim = sim_factory(model="policy-a")
    spool = tmp_path / "spool"
    config = {
        "pools": {"a": pool(sim.base_url, served_model="policy-a")},
        "models": {"assistant": {"pool": "a"}},
        "ids": {"keys": [KEY]},
        "events": {"spool": {"dir": str(spool)}},
        "auth": {
            "keys": [
                {"hash": hash_secret("sk-private"), "app_id": "private", "consent": "none"},
                {"hash": hash_secret("sk-shop"), "app_id": "shop"},
            ]
        },
    }
    gw = gateway_factory(config)
    private = gw.client(api_key="sk-private")
    shop = gw.client(api_key="sk-shop")
    said = [{"role": "user", "content": "Where is parcel 4711?"}]
    a = private.chat.completions.create(model="assistant", messages=said)  # type: ignore[arg-type]
    b = shop.chat.completions.create(model="assistant", messages=said)  # type: ignore[arg-type]
    c = shop.chat.completions.create(
        model="assistant",
        messages=said,  # type: ignore[arg-type]
        extra_headers={"X-Loopgate-Consent": "none"},
    )
    edit = {"response_id": a.id, "kind": "edit", "edited_text": "parcel 4711 is late"}
    answer = httpx.post(
        gw.v1 + "/feedback", json=edit, headers={"Authorization": "Bearer sk-private"}
    )
    assert answer.status_code == 200, answer.text
    assert gw.stop() == 0
    events = _events(spool)
    completions = {e["body"]["response_id"]: e["body"] for e in events if e["type"] == "completion"}
    for response_id in (a.id, c.id):
        body = completions[response_id]
        assert body["consent"] == "none"
        assert body["response"] is None
        assert body["request"]["messages"] is None
    assert completions[b.id]["response"]["text"]  # the other app keeps its content
    (feedback,) = [e["body"] for e in events if e["type"] == "feedback"]
    assert feedback["consent"] == "none"
    assert feedback["edited_text"] is None
    assert "4711" not in json.dumps([e for e in events if e["body"].get("app") == "private"])
