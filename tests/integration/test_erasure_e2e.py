"""Erasure end to end: users chat through two real gateways (one sending to a real broker,
one spooling), two of them are forgotten (CLI and admin API), and afterwards their content
cannot be read in the spool, the Kafka topics or a dataset rebuilt from both, while the
third user's content is intact and everyone's metadata still counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from feedback.privacy import ERASED, open_event
from feedback.privacy.file_store import FileKeyStore
from feedback.privacy.keys import KeyCache
from feedback.schema import AUDIT_TOPIC, COMPLETIONS_TOPIC, FEEDBACK_TOPIC
from feedback.sinks.spool import SEGMENT_SUFFIX
from gateway.ids import ResponseIdSigner
from tests.support.gateway import GatewayServer, metric, poll, pool
from tests.support.kafka import TansuBroker, consume_all
from tests.support.sim import SimFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning",
    "ignore:open_text is deprecated:DeprecationWarning",
)

SIGNING, UNIT_KEY, TOKEN = "s" * 32, "u" * 32, "erasure-admin-token"
USERS = ("alice", "bob", "carol")  # alice forgotten by the CLI, carol by the admin API


def unit_hash(user: str) -> str:
    return ResponseIdSigner([SIGNING.encode()], UNIT_KEY.encode()).unit_hash(user)


def marker(user: str, where: str) -> str:
    return f"{user}-{where}-zebra"  # words the redactor leaves alone, unique per user


def _cli() -> Any:
    from cli import _register, app

    _register()
    return app


def _spooled(root: Path) -> list[bytes]:
    return [line for path in sorted(root.rglob(f"*{SEGMENT_SUFFIX}"))
            for line in path.read_bytes().splitlines() if line.strip()]  # fmt: skip


def _converse(gateway: GatewayServer, user: str, where: str) -> None:
    answer = gateway.client().chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": f"Question from {marker(user, where)}?"}],
        user=user,
    )
    for body in (
        {"kind": "thumbs_up"},
        {"kind": "edit", "edited_text": f"Better: {marker(user, where + '-edit')}"},
    ):
        sent = httpx.post(
            gateway.v1 + "/feedback", json={"response_id": answer.id, **body}, timeout=10
        )
        assert sent.status_code == 200, sent.text


def test_forgotten_users_are_unreadable_everywhere_and_the_others_intact(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: SimFactory,
    kafka_broker: TansuBroker,
    tmp_path: Path,
) -> None:
    sim = sim_factory(model="policy-a")
    keys_dir = tmp_path / "keys"

    def config(events: dict[str, Any]) -> dict[str, Any]:
        return {
            "pools": {"a": pool(sim.base_url, served_model="policy-a")},
            "models": {"assistant": {"pool": "a"}},
            "ids": {"keys": [SIGNING], "unit_key": UNIT_KEY},
            "flags": {"admin_token": TOKEN},
            "events": {**events, "privacy": {"dir": str(keys_dir)}},
        }

    to_kafka = gateway_factory(
        config(
            {
                "kafka": {"bootstrap_servers": [kafka_broker.bootstrap], "partitions": 2},
                "spool": {"dir": str(tmp_path / "spool-a")},
            }
        )
    )
    spooling = gateway_factory(config({"spool": {"dir": str(tmp_path / "spool-b")}}))
    for user in USERS:
        _converse(to_kafka, user, "kafka")
        _converse(spooling, user, "spool")
    # Sealed and sent before the forget: events still queued when a unit is forgotten are
    # written without its content, and there would be less to leave out below.
    events = 3 * len(USERS)  # an answer and two pieces of feedback each
    poll(lambda: metric(to_kafka, "loopgate_events_sent_total") >= events, 30, "events sent")

    forgot = httpx.post(
        to_kafka.base_url + "/admin/privacy/forget",
        json={"unit_id": "carol", "reason": "erasure request"},
        headers={"Authorization": f"Bearer {TOKEN}", "X-Loopgate-Actor": "dpo-officer"},
        timeout=10,
    )
    assert forgot.status_code == 200, forgot.text
    assert forgot.json() == {
        "object": "privacy.forget", "unit_hash": unit_hash("carol"), "key_deleted": True,
    }  # fmt: skip
    refused = httpx.post(to_kafka.base_url + "/admin/privacy/forget", json={"unit_id": "x"})
    assert refused.status_code in (401, 403)
    assert to_kafka.stop() == 0
    assert spooling.stop() == 0

    runner = CliRunner()
    build = ["datasets", "build", "--kafka", kafka_broker.bootstrap, "--group", "erasure",
             "--state", str(tmp_path / "state"), "--spool", str(tmp_path / "spool-b"),
             "--keys", str(keys_dir), "--test-fraction", "0"]  # fmt: skip
    before = runner.invoke(_cli(), [*build, "--out", str(tmp_path / "before")])
    assert before.exit_code == 0, before.output
    assert "left out 4 events of 1 forgotten units" in before.output  # carol's, already

    result = runner.invoke(
        _cli(), ["privacy", "forget", "--unit", "alice", "--config", str(to_kafka.config_path)]
    )
    assert result.exit_code == 0, result.output
    assert f"forgot unit {unit_hash('alice')}" in result.output
    forgotten = {unit_hash("alice"), unit_hash("carol")}
    keys = FileKeyStore(keys_dir, KeyCache(1000, 60))

    def check(raw_lines: list[bytes], expected: int) -> list[dict[str, Any]]:
        """Sealed on the wire; forgotten units erased, bob's content back, metadata all there."""
        events = [orjson.loads(line) for line in raw_lines]
        ours = [e for e in events if e["type"] in ("completion", "feedback")]
        assert len(ours) == expected
        everything = b"\n".join(raw_lines)
        for user in USERS:
            assert marker(user, "").encode()[:-6] not in everything  # no one in the clear
        for event in ours:
            opened = open_event(event, keys)
            body, unit = opened["body"], opened["body"]["unit_hash"]
            text = json.dumps(opened)
            if unit in forgotten and body.get("kind") == "thumbs_up":
                assert opened is event  # no content, nothing sealed: it still counts
            elif unit in forgotten:
                assert opened["erased"] is True
                assert "zebra" not in text
                if opened["type"] == "completion":
                    assert body["request"]["messages"] == ERASED
                    assert body["usage"]["total_tokens"] > 0  # statistics still count it
                elif body["kind"] == "edit":
                    assert body["edited_text"] == ERASED
            else:
                assert unit == unit_hash("bob")
                assert "erased" not in opened
                if opened["type"] == "completion":
                    assert "bob-" in body["request"]["messages"][0]["content"]
                    assert body["response"]["text"]
                elif body["kind"] == "edit":
                    assert body["edited_text"].startswith("Better: bob-")
        return ours

    check(_spooled(tmp_path / "spool-b"), expected=9)
    records = consume_all(kafka_broker.bootstrap, [COMPLETIONS_TOPIC, FEEDBACK_TOPIC], 9)
    check([r.value for r in records], expected=9)
    (audit,) = [
        orjson.loads(r.value) for r in consume_all(kafka_broker.bootstrap, [AUDIT_TOPIC], 1)
    ]
    assert (audit["type"], audit["body"]["what"]) == (
        "unit_forgotten",
        f"unit:{unit_hash('carol')}",
    )
    assert "dpo-officer" in audit["body"]["who"]

    tail = runner.invoke(
        _cli(),
        [
            "events",
            "tail",
            "--spool",
            str(tmp_path / "spool-b"),
            "--keys",
            str(keys_dir),
            "--type",
            "feedback",
            "--last",
            "20",
        ],
    )
    assert tail.exit_code == 0, tail.output
    assert tail.output.count(ERASED) == 2  # alice's and carol's edits
    assert "bob-spool-edit-zebra" in tail.output

    after = runner.invoke(_cli(), [*build, "--out", str(tmp_path / "after")])
    assert after.exit_code == 0, after.output
    assert "left out 8 events of 2 forgotten units" in after.output
    rows_before = _rows(tmp_path / "before")
    rows_after = _rows(tmp_path / "after")
    assert {u for row in rows_before for u in row["unit_hashes"]} == {
        unit_hash("alice"), unit_hash("bob"),
    }  # fmt: skip
    assert {u for row in rows_after for u in row["unit_hashes"]} == {unit_hash("bob")}
    assert [r for r in rows_before if unit_hash("bob") in r["unit_hashes"]] == rows_after
    assert "alice-" not in json.dumps(rows_after)


def _rows(directory: Path) -> list[dict[str, Any]]:
    return sorted(
        (
            orjson.loads(line)
            for path in sorted(directory.rglob("*.jsonl"))
            for line in path.read_bytes().splitlines()
        ),
        key=lambda row: json.dumps(row, sort_keys=True),
    )
