"""The gateway builds completion events as plain dicts: pinned here to the models and schemas."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.config import RedactionConfig
from feedback.redact import Redactor
from feedback.schema import SCHEMA_DIR, CompletionEvent, to_json
from feedback.scrub import scrub, scrub_json
from gateway.events import completion_event
from gateway.exchange import Exchange

REDACTOR = Redactor.from_config(RedactionConfig())
SCHEMA = json.loads((SCHEMA_DIR / "completion.json").read_text())


def _exchange(**changes: Any) -> Exchange:
    ex = Exchange(
        request_id="req-1",
        kind="chat",
        started_at=time.time(),
        model="support-bot",
        flag="support-bot",
        variant="canary",
        flag_version=3,
        reason="split",
        served_model="policy-b",
        app_id="shop",
        unit_id="user-1",
        request={
            "model": "policy-b",
            "user": "user-1",
            "messages": [{"role": "user", "content": "mail me at jo@example.org"}],
            "temperature": 0.2,
        },
        response_id="lg1.payload.mac",
        upstream_id="chatcmpl-1",
        text_parts=["Sure, ", "call 415-555-0134."],
        finish_reason="stop",
        prompt_tokens=9,
        completion_tokens=7,
        latency_s=0.25,
        ttft_s=0.05,
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    for key, value in changes.items():
        setattr(ex, key, value)
    return ex


CASES = {
    "ok": {},
    "stream_with_tools": {
        "stream": True,
        "text_parts": [],
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "track"}}],
    },
    "error": {"status": "error", "http_status": 502, "error": "upstream broke", "text_parts": []},
    "cancelled": {"status": "cancelled", "http_status": 499, "prompt_tokens": 0,
                  "completion_tokens": 0},
    "consent_none": {"consent": "none"},
    "completions": {"kind": "completion", "request": {"model": "m", "prompt": "Parcels are"}},
    "static_route": {"flag": "", "variant": "", "response_id": "", "ttft_s": None},
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_the_plain_dict_is_exactly_what_the_model_dumps(case: str) -> None:
    plain = completion_event(
        _exchange(**CASES[case]), instance="gw-1", unit_hash="ab" * 16, safety={"jailbreak": 1}
    )
    model = CompletionEvent.model_validate(copy.deepcopy(plain.data))
    assert model.model_dump() == plain.data
    assert plain.key == model.key
    assert plain.topic == model.topic


@pytest.mark.parametrize("case", CASES)
def test_the_plain_dict_scrubs_to_the_same_bytes_as_its_model(case: str) -> None:
    plain = completion_event(_exchange(**CASES[case]), instance="gw-1", unit_hash="ab" * 16)
    model = CompletionEvent.model_validate(copy.deepcopy(plain.data))
    slow, slow_found = scrub(model, REDACTOR)
    fast, fast_found = scrub_json(plain, REDACTOR)
    assert fast == to_json(slow)
    assert fast_found == slow_found
    jsonschema.validate(json.loads(fast), SCHEMA)


def test_consent_none_leaves_no_content() -> None:
    plain = completion_event(_exchange(consent="none"), instance="gw", unit_hash="ab" * 16)
    data, _ = scrub_json(plain, REDACTOR)
    event = json.loads(data)
    assert event["body"]["response"] is None
    assert event["body"]["request"]["messages"] is None
    assert "user" not in event["body"]["request"]["params"]
    assert b"example.org" not in data


@settings(max_examples=60, deadline=None)
@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    local=st.from_regex(r"[a-z]{2,10}", fullmatch=True),
)
def test_a_planted_email_never_leaves_in_a_completion_event(
    before: str, after: str, local: str
) -> None:
    email = f"{local}.x@example.com"
    ex = _exchange(
        request={
            "model": "m",
            "messages": [{"role": "user", "content": f"{before} {email} {after}"}],
        },
        text_parts=[before, f" {email} ", after],
    )
    data, found = scrub_json(completion_event(ex, instance="gw", unit_hash="ab" * 16), REDACTOR)
    assert email.encode() not in data
    assert found.get("email", 0) >= 2
