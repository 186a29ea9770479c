"""Whole events: PII planted in every field of every event type never leaves the process."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.redact import Redactor, luhn_ok
from feedback.schema import (
    SCHEMA_DIR,
    AuditBody,
    AuditEvent,
    CompletionBody,
    CompletionEvent,
    ErrorInfo,
    Event,
    FeedbackBody,
    FeedbackEvent,
    PlainEvent,
    RequestContent,
    ResponseContent,
)
from feedback.scrub import scrub, scrub_json
from tests.unit.feedback.events import NOW, completion, feedback

REDACTOR = Redactor()
SCHEMAS = {
    name: json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    for name in ("completion", "feedback", "audit")
}
RESPONSE_ID = "lg1.eyJmIjoic3VwcG9ydC1ib3QifQ.Zm9vYmFyYmF6cXV4cXV1eA"


def _luhn_complete(prefix: str) -> str:
    return next(prefix + c for c in string.digits if luhn_ok(prefix + c))


def _iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


emails = st.builds(
    lambda local, domain: f"{local}@{domain}.com",
    st.from_regex(r"[a-z][a-z0-9._]{0,10}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True),
)
card_digits = st.builds(
    lambda first, rest: _luhn_complete(first + rest),
    st.sampled_from(["4", "5"]),
    st.text(string.digits, min_size=14, max_size=14),
)
cards = st.builds(
    lambda digits, sep: sep.join(digits[i : i + 4] for i in range(0, 16, 4)),
    card_digits,
    st.sampled_from(["", " ", "-"]),
)
us_phones = st.from_regex(r"[2-9][0-9]{2}[2-9][0-9]{6}", fullmatch=True)  # bare 10 digits
phones = st.one_of(
    us_phones,
    st.from_regex(r"\+44 20 [0-9]{4} [0-9]{4}", fullmatch=True),
    st.from_regex(r"\+33 [1-9]( [0-9]{2}){4}", fullmatch=True),
)
ssns = st.from_regex(r"[1-5][0-9]{2}-[1-9][0-9]-[1-9][0-9]{3}", fullmatch=True)
ibans = st.builds(
    lambda bban, lower: _iban("DE", bban).lower() if lower else _iban("DE", bban),
    st.text(string.digits, min_size=18, max_size=18),
    st.booleans(),
)
pii_text = st.one_of(emails, cards, phones, ssns, ibans)
pii_number = st.one_of(card_digits.map(int), us_phones.map(int))
words = st.text(string.ascii_letters + " ,.!?", max_size=20)


class Planted:
    """Hands out PII values for each field, remembering each one to look for afterwards."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data
        self.texts: list[str] = []
        self.numbers: list[int] = []

    def bare(self) -> str:
        value = self._data.draw(pii_text)
        self.texts.append(value)
        return value

    def text(self) -> str:
        before, after = self._data.draw(words), self._data.draw(words)
        return f"{before} {self.bare()} {after}"

    def number(self) -> int:
        value = self._data.draw(pii_number)
        self.numbers.append(value)
        return value

    def mapping(self) -> dict[str, Any]:
        """A metadata-like dict: PII in keys, in values under name/id/type, and as numbers."""
        return {
            "name": self.bare(),
            "id": self.bare(),
            "type": self.text(),
            self.bare(): 1,
            "n": self.number(),
        }


def completion_with_pii(p: Planted) -> CompletionEvent:
    tool_call = {
        "id": p.bare(),
        "type": "function",
        "function": {"name": p.bare(), "arguments": json.dumps({"to": p.bare()})},
    }
    messages = [
        {"role": "system", "content": p.text(), "name": p.bare()},
        {
            "role": "user",
            "name": p.bare(),
            "content": [{"type": "text", "text": p.text()}],
        },
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": p.bare(), "content": p.text()},
    ]
    params = {"temperature": 0.2, "seed": p.number(), "metadata": p.mapping(), "stop": [p.bare()]}
    body = CompletionBody(
        response_id=RESPONSE_ID,
        flag="support-bot",
        flag_version=3,
        variant="canary",
        app="app-1",
        unit_hash="0" * 32,
        model_requested=p.bare(),
        model_served="policy-b",
        request=RequestContent(messages=messages, prompt=[p.text()], params=params),
        response=ResponseContent(text=p.text(), tool_calls=[tool_call]),
        latency_ms=12.0,
        status="error",
        error=ErrorInfo(type="upstream_error", message=p.text(), code=None, status=502),
    )
    return CompletionEvent.create(body, gateway="gw-1", now=NOW, trace_id="0" * 32)


def feedback_with_pii(p: Planted) -> FeedbackEvent:
    body = FeedbackBody(
        response_id=RESPONSE_ID,
        flag="support-bot",
        variant="canary",
        app="app-1",
        kind="edit",
        value=float(p.number()),
        edited_text=p.text(),
        category=p.bare(),
        comment=p.text(),
        metadata=p.mapping(),
        idempotency_key=p.bare(),
    )
    return FeedbackEvent.create(body, gateway="gw-1", now=NOW)


def audit_with_pii(p: Planted) -> AuditEvent:
    flag = {"key": "support-bot", "rules": [{"kind": "allow_units", "units": [p.bare()]}]}
    body = AuditBody(
        who=p.bare(),
        action="put",
        what="support-bot",
        version=2,
        before={**flag, "owner": p.mapping()},
        after={p.bare(): p.text()},
        reason=p.text(),
    )
    return AuditEvent.create(body, gateway="gw-1", now=NOW)


def _leaks(raw: str, planted: Planted) -> Iterator[str]:
    squeezed = raw.replace(" ", "").replace("-", "").lower()
    for value in planted.texts:
        compact = value.replace(" ", "").replace("-", "").lower()
        if value in raw or compact in squeezed:
            yield value
    for number in planted.numbers:
        if str(number) in raw:
            yield str(number)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pii_in_every_field_of_every_event_type_never_survives(data: st.DataObject) -> None:
    planted = Planted(data)
    events: list[Event] = [
        completion_with_pii(planted),
        feedback_with_pii(planted),
        audit_with_pii(planted),
    ]
    for event in events:
        raw, found = scrub_json(event, REDACTOR)
        assert list(_leaks(raw.decode(), planted)) == []
        assert found
        decoded = json.loads(raw)
        schema = SCHEMAS["audit" if event.type == "flag_change" else event.type]
        jsonschema.validate(decoded, schema)
        # The fields the gateway set itself are kept as they were.
        assert decoded["event_id"] == str(event.event_id)
        if event.type != "flag_change":
            assert decoded["body"]["response_id"] == RESPONSE_ID
            body = decoded["body"]
            assert (body["flag"], body["variant"]) == ("support-bot", "canary")
        # The model path runs the same code and gives the same event.
        model, model_found = scrub(event, REDACTOR)
        assert model.model_dump(mode="json") == decoded
        assert model_found == found


def test_the_fields_the_gateway_sets_are_kept_and_the_rest_redacted() -> None:
    event = completion(
        request=RequestContent(
            messages=[{"role": "user", "name": "bob@example.com", "content": "hi"}],
            params={"seed": 4111111111111111, "metadata": {"type": "415-555-2671"}},
        ),
        model_requested="call 4155552671",
    )
    raw, found = scrub_json(event, REDACTOR)
    body = json.loads(raw)["body"]
    assert body["request"]["messages"] == [{"role": "user", "name": "[EMAIL]", "content": "hi"}]
    assert body["request"]["params"] == {"seed": "[CARD]", "metadata": {"type": "[PHONE]"}}
    assert body["model_requested"] == "call [PHONE]"
    assert found == {"email": 1, "card": 1, "phone": 2}
    assert body["safety"] == found
    kept = ("response_id", "flag", "variant", "app", "unit_hash", "model_served", "usage")
    for field in kept:
        assert body[field] == json.loads(event.model_dump_json())["body"][field]


def test_dictionary_keys_are_redacted_without_losing_values() -> None:
    event = feedback(
        metadata={"alice.pii@example.com": 1, "bob@example.com": 2, "name": "x"},
        category="card 4111 1111 1111 1111",
        idempotency_key="bob@example.com",
    )
    raw, found = scrub_json(event, REDACTOR)
    body = json.loads(raw)["body"]
    assert body["metadata"] == {"[EMAIL]": 1, "[EMAIL]#2": 2, "name": "x"}
    assert body["category"] == "card [CARD]"
    assert body["idempotency_key"] == "[EMAIL]"
    assert found == {"email": 3, "card": 1}


def test_numbers_of_pii_shape_only() -> None:
    values = {
        "card": 4111111111111111,
        "phone": 4155552671,
        "phone_with_country": 14155552671,
        "ms_timestamp": 1733155200012,  # passes Luhn, but no card issuer starts with 1
        "seconds": 1733155200,
        "count": 12,
        "ratio": 0.5,
        "big_float": 4111111111111111.0,
        "flag": True,
    }
    found: dict[str, int] = {}
    assert luhn_ok("1733155200012")
    assert REDACTOR.redact_value(values, found) == {
        **values,
        "card": "[CARD]",
        "phone": "[PHONE]",
        "phone_with_country": "[PHONE]",
        "big_float": "[CARD]",
    }
    assert found == {"card": 2, "phone": 2}


def test_a_pii_number_where_a_score_belongs_is_dropped() -> None:
    raw, found = scrub_json(feedback(kind="rating", value=4155552671.0), REDACTOR)
    assert json.loads(raw)["body"]["value"] is None
    assert found == {"phone": 1}
    raw, found = scrub_json(feedback(kind="rating", value=4.0), REDACTOR)
    assert json.loads(raw)["body"]["value"] == 4.0


def test_a_plain_event_is_scrubbed_in_place_like_a_model() -> None:
    event = completion(text="mail me at jo@example.org")
    data = event.model_dump()
    raw, found = scrub_json(PlainEvent("completion", event.topic, event.key, data), REDACTOR)
    assert raw == scrub_json(event, REDACTOR)[0]
    assert found == {"email": 2}
    assert "jo@example.org" not in json.dumps(data["body"]["request"])
