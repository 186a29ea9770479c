"""Preferences through real processes: two answers of one flag, judged by the app (/v1/feedback)
or by a reviewer (/admin/feedback), land as events, are counted per variant pair, and become
a DPO row; foreign, forged and mismatched pairs are refused and recorded never.

The gateway on this branch sends no shadow calls yet, so the pair here is two primaries of the
same flag (one pinned to each variant) with the same prompt; shadow ids (Claims.pair) are
checked in tests/unit/gateway/test_preference_pairs.py, and here with ids minted by the
gateway's own key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from feedback.datasets.export import load_manifest
from feedback.schema import SCHEMA_DIR
from gateway.auth import hash_secret
from gateway.ids import Claims, ResponseIdSigner
from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

KEY = "k" * 40
FLAG = "support-bot"
REVIEWER, VIEWER = "reviewer-token", "viewer-token"
QUESTION: list[Any] = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture
def setup(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> tuple[GatewayServer, Path]:
    """Two policy versions under one flag (alice pinned to control, dave to canary), two apps."""
    a = sim_factory(model="policy-a", style="concise", seed=1)
    b = sim_factory(model="policy-b", style="friendly", seed=2)
    flags = tmp_path / "flags.yaml"
    variants = [
        {"name": "control", "pool": "policy-a", "weight": 50},
        {"name": "canary", "pool": "policy-b", "weight": 50},
    ]
    rules = [
        {"kind": "allow_units", "units": ["alice"], "variant": "control"},
        {"kind": "allow_units", "units": ["dave"], "variant": "canary"},
    ]
    other = {"control": "x", "variants": [{"name": "x", "pool": "policy-a", "weight": 100}]}
    flags.write_text(
        yaml.safe_dump(
            {
                "flags": {
                    FLAG: {"control": "control", "variants": variants, "rules": rules},
                    "other-bot": other,
                }
            }
        )
    )
    spool = tmp_path / "spool"
    config = {
        "pools": {
            "policy-a": pool(a.base_url, served_model="policy-a"),
            "policy-b": pool(b.base_url, served_model="policy-b"),
        },
        "flags": {"source": "file", "path": str(flags)},
        "ids": {"keys": [KEY], "max_age_s": 3600},
        "events": {"spool": {"dir": str(spool)}},
        "auth": {
            "keys": [
                {"hash": hash_secret("sk-shop"), "app_id": "shop"},
                {"hash": hash_secret("sk-other"), "app_id": "other"},
            ],
            "admin_tokens": [
                {"hash": hash_secret(REVIEWER), "role": "reviewer", "name": "ana"},
                {"hash": hash_secret(VIEWER), "role": "viewer", "name": "val"},
            ],
        },
    }
    return gateway_factory(config), spool


def _ask(gw: GatewayServer, user: str, model: str = FLAG, key: str = "sk-shop") -> str:
    answer = gw.client(api_key=key).chat.completions.create(
        model=model, messages=QUESTION, user=user
    )
    return answer.id


def _post(gw: GatewayServer, path: str, body: dict[str, Any], token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(gw.base_url + path, json=body, headers=headers, timeout=10)


def _prefer(gw: GatewayServer, a: str, b: str, winner: str, **more: Any) -> httpx.Response:
    body = {"response_id": a, "kind": "preference", "other_response_id": b, "winner": winner}
    return _post(gw, "/v1/feedback", {**body, **more}, "sk-shop")


def _shadow_pairs(gw: GatewayServer) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{gw.base_url}/admin/experiments/{FLAG}",
        headers={"Authorization": f"Bearer {VIEWER}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    pairs: list[dict[str, Any]] = answer.json()["shadow"]["pairs"]
    return pairs


def test_a_preference_lands_as_an_event_is_counted_and_becomes_a_dpo_row(
    setup: tuple[GatewayServer, Path], tmp_path: Path
) -> None:
    gw, spool = setup
    control, canary = _ask(gw, "alice"), _ask(gw, "dave")
    # The app showed both; its user preferred B (the canary's answer).
    sent = _prefer(gw, control, canary, "b", idempotency_key="pick-1")
    assert sent.status_code == 200, sent.text
    out = sent.json()
    assert out["recorded"] is True
    assert (out["variant"], out["other_variant"], out["winner"]) == ("control", "canary", "b")
    assert _prefer(gw, control, canary, "b", idempotency_key="pick-1").json()["duplicate"]
    # A reviewer judges the same pair the other way round: B (now control) is worse.
    review = {
        "response_id": canary, "kind": "preference", "other_response_id": control,
        "winner": "a", "queue": "side-by-side", "time_spent_ms": 4200,
    }  # fmt: skip
    judged = _post(gw, "/admin/feedback", review, REVIEWER)
    assert judged.status_code == 200, judged.text
    assert judged.json()["source"] == "reviewer"
    tie = _post(gw, "/admin/feedback", {**review, "winner": "tie", "source": "judge",
                                        "reviewer": "judge-v1"}, REVIEWER)  # fmt: skip
    assert tie.status_code == 200, tie.text
    (pair,) = _shadow_pairs(gw)
    assert (pair["candidate"], pair["baseline"]) == ("canary", "control")
    assert (pair["wins"], pair["losses"], pair["ties"], pair["both_bad"]) == (2, 0, 1, 0)
    assert pair["win_rate"]["estimate"] == pytest.approx(5 / 6)
    assert 0 < pair["win_rate"]["low"] < 5 / 6 < pair["win_rate"]["high"] <= 1
    env = {**os.environ, "COLUMNS": "80", "LOOPGATE_ADMIN_TOKEN": VIEWER}
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "experiments", "show", FLAG, "--url", gw.base_url],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "canary vs control" in shown.stdout
    assert "2/0/1/0" in shown.stdout
    assert "83.3% [" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    assert gw.stop() == 0

    events = spooled_events(spool)
    schema = orjson.loads((SCHEMA_DIR / "feedback.json").read_bytes())
    prefs = [e for e in events if e["type"] == "feedback"]
    for event in prefs:
        jsonschema.validate(event, schema)
    bodies = [e["body"] for e in prefs]
    assert [(b["source"], b["reviewer"], b["winner"]) for b in bodies] == [
        ("user", None, "b"), ("reviewer", "ana", "a"), ("judge", "judge-v1", "tie"),
    ]  # fmt: skip
    assert bodies[0]["response_id"] == control
    assert bodies[0]["other_response_id"] == canary
    assert (bodies[0]["variant"], bodies[0]["other_variant"], bodies[0]["app"]) == (
        "control", "canary", "shop",
    )  # fmt: skip
    assert (bodies[1]["queue"], bodies[1]["time_spent_ms"], bodies[1]["app"]) == (
        "side-by-side", 4200, "shop",
    )  # fmt: skip
    texts = {
        e["body"]["response_id"]: e["body"]["response"]["text"]
        for e in events
        if e["type"] == "completion"
    }

    out_dir = tmp_path / "dataset"
    result = CliRunner().invoke(
        _cli(),
        [
            "datasets", "build", "--spool", str(spool), "--out", str(out_dir),
            "--test-fraction", "0", "--keys", str(tmp_path / "keys"), "--format", "jsonl",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out_dir)
    # The user's and the reviewer's judgements give the same row: kept once (the build's
    # dedupe); the tie says nothing to learn from.
    assert manifest["by_rule"]["dpo"] == {"preference": 1}
    assert manifest["dropped"]["dpo_duplicate"] == 1
    rows = [orjson.loads(x) for x in (out_dir / "dpo" / "train.jsonl").read_bytes().splitlines()]
    (row,) = rows  # chosen: the canary's answer; rejected: control's; with provenance
    assert row["rule"] == "preference"
    assert row["chosen"][-1]["content"] == texts[canary]
    assert row["rejected"][-1]["content"] == texts[control]
    assert texts[canary] != texts[control]
    assert (row["variant"], row["rejected_variant"]) == ("canary", "control")
    assert row["response_ids"] == [canary, control]


def test_foreign_forged_tampered_and_mismatched_pairs_are_refused_and_never_recorded(
    setup: tuple[GatewayServer, Path],
) -> None:
    gw, spool = setup
    control, canary = _ask(gw, "alice"), _ask(gw, "dave")
    foreign = _ask(gw, "dave", key="sk-other")
    elsewhere = _ask(gw, "alice", model="other-bot")
    signer = ResponseIdSigner([KEY.encode()])
    primary = signer.verify(control, now=time.time(), max_age=3600)
    # A shadow id is signed with its primary's nonce; one claiming another primary's is forged.
    stranger = Claims(FLAG, "canary", primary.flag_version, "shop", primary.unit,
                      int(time.time()), "shadow-nonce", pair="not-" + primary.nonce)  # fmt: skip
    genuine = Claims(FLAG, "canary", primary.flag_version, "shop", primary.unit,
                     int(time.time()), "shadow-nonce", pair=primary.nonce)  # fmt: skip
    prefix, payload, mac = canary.split(".")
    tampered = f"{prefix}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{mac}"
    cases = [
        (foreign, 403, "permission_error"),
        (elsewhere, 422, "invalid_request_error"),
        (signer.sign(stranger), 422, "invalid_request_error"),
        (tampered, 400, "invalid_request_error"),
    ]
    for other, status, kind in cases:
        refused = _prefer(gw, control, other, "a")
        assert refused.status_code == status, (other, refused.text)
        error = refused.json()["error"]
        assert error["type"] == kind
        assert error["param"] == "other_response_id"
    assert _prefer(gw, foreign, control, "a").status_code == 403  # A foreign, B ours
    assert _prefer(gw, control, control, "a").status_code == 422  # one answer twice
    # The batch endpoint refuses the same items one by one and records the good one.
    items = [
        {"response_id": control, "kind": "preference", "other_response_id": foreign, "winner": "a"},
        {"response_id": control, "kind": "preference", "other_response_id": canary, "winner": "a"},
    ]
    batch = _post(gw, "/v1/feedback/batch", {"items": items}, "sk-shop").json()
    assert [item["status"] for item in batch["data"]] == [403, 200]
    # The admin API takes any app's answers but still no forged pair, and needs a reviewer.
    review = {"response_id": foreign, "kind": "preference", "other_response_id": control,
              "winner": "b"}  # fmt: skip
    assert _post(gw, "/admin/feedback", review, REVIEWER).status_code == 422  # two apps
    assert _post(gw, "/admin/feedback", review, VIEWER).status_code == 403
    shadow = signer.sign(genuine)
    ok = {**review, "response_id": control, "other_response_id": shadow}
    assert _post(gw, "/admin/feedback", ok, REVIEWER).status_code == 200  # a real shadow pair
    forged = {**ok, "other_response_id": signer.sign(stranger)}
    assert _post(gw, "/admin/feedback", forged, REVIEWER).status_code == 422
    assert gw.stop() == 0
    recorded = [e["body"] for e in spooled_events(spool) if e["type"] == "feedback"]
    assert [(b["response_id"], b["other_response_id"]) for b in recorded] == [
        (control, canary),
        (control, shadow),
    ]


def _cli() -> Any:
    from cli import _register, app

    _register()
    return app
