"""Cutting oversized events to fit, record headers, and what each producer error means (pure)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import orjson
import pytest

from feedback.schema import (
    SCHEMA_DIR,
    AuditBody,
    AuditEvent,
    RequestContent,
    ResponseContent,
    to_json,
)
from feedback.sinks import faults
from feedback.sinks.headers import record_headers, traceparent
from feedback.sinks.kafka import load_kafka_client
from feedback.truncation import MARKER, fit
from tests.unit.feedback.events import NOW, completion, feedback

SCHEMAS = {
    name: orjson.loads((SCHEMA_DIR / f"{name}.json").read_bytes())
    for name in ("completion", "feedback", "audit")
}
MIB = 1024 * 1024


def _marker_sizes(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[truncated by loopgate: (\d+) bytes\]", text)]


def test_a_big_completion_is_cut_to_the_budget_and_still_validates() -> None:
    question, answer = "q" * 1_500_000, "é" * 700_000  # 1.5 MB in, 1.4 MB out (2-byte chars)
    event = completion(
        "lg1.big.m",
        request=RequestContent(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": question, "name": "alice"},
            ],
            params={"temperature": 0.2, "max_tokens": 50},
        ),
        response=ResponseContent(text=answer),
    )
    original = to_json(event)
    cut = fit(original, MIB)
    assert cut is not None
    assert len(cut) <= MIB
    data = orjson.loads(cut)
    jsonschema.validate(data, SCHEMAS["completion"])
    before = orjson.loads(original)
    # Nothing but content changed: ids, flag, variant, counts and timings are whole.
    for field in ("response_id", "flag", "variant", "app", "unit_hash", "usage", "latency_ms"):
        assert data["body"][field] == before["body"][field]
    assert data["event_id"] == before["event_id"]
    messages = data["body"]["request"]["messages"]
    assert messages[0] == {"role": "system", "content": "be brief"}  # short fields survive
    assert (messages[1]["role"], messages[1]["name"]) == ("user", "alice")
    assert data["body"]["request"]["params"] == {"temperature": 0.2, "max_tokens": 50}
    # Each cut string keeps its start and says how big it was.
    assert messages[1]["content"].startswith("q" * 1000)
    assert _marker_sizes(messages[1]["content"]) == [1_500_000]
    assert data["body"]["response"]["text"].startswith("é" * 1000)
    assert _marker_sizes(data["body"]["response"]["text"]) == [1_400_000]
    # As much as fits is kept: the budget is nearly used up.
    assert len(cut) > MIB - 1000


def test_feedback_text_is_cut_within_the_schemas_length_limits() -> None:
    event = feedback("lg1.fb.m", edited_text="😀" * 100_000, comment="c" * 10_000)
    original = to_json(event)
    assert len(original) > 300_000
    cut = fit(original, 64 * 1024)
    assert cut is not None
    assert len(cut) <= 64 * 1024
    data = orjson.loads(cut)
    jsonschema.validate(data, SCHEMAS["feedback"])
    assert data["body"]["kind"] == "edit"
    assert data["body"]["idempotency_key"] == "idem-1"
    assert _marker_sizes(data["body"]["edited_text"]) == [400_000]


def test_an_audit_event_is_cut_in_its_before_and_after_only() -> None:
    body = AuditBody(who="ops", action="set", what="bot", before={"units": ["u" * 300_000]},
                     after={"units": ["v" * 300_000]})  # fmt: skip
    original = to_json(AuditEvent.create(body, gateway="gw", now=NOW))
    cut = fit(original, 100_000)
    assert cut is not None
    data = orjson.loads(cut)
    jsonschema.validate(data, SCHEMAS["audit"])
    assert (data["body"]["who"], data["body"]["what"]) == ("ops", "bot")
    assert _marker_sizes(data["body"]["before"]["units"][0]) == [300_000]


def test_what_cannot_be_cut_to_fit_is_refused() -> None:
    # Forty thousand short messages: the structure alone is over the budget.
    many = [{"role": "user", "content": "hi"} for _ in range(40_000)]
    original = to_json(completion("lg1.many.m", request=RequestContent(messages=many)))
    assert len(original) > MIB
    assert fit(original, MIB) is None
    assert fit(b"not json", 10) is None
    assert fit(b"[1, 2]", 1) is None


def test_a_string_is_never_made_longer() -> None:
    event = completion("lg1.short.m", text="x" * 5)
    original = to_json(event)
    # Cutting strings shorter than the marker would grow them: they stay whole, and a budget
    # that only that could meet is refused.
    assert fit(original, len(original) - 5) is None
    assert MARKER.format(size=1) not in original.decode()


def test_headers_carry_type_version_event_id_and_the_trace() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    event = completion("lg1.h.m")
    value = to_json(event.model_copy(update={"trace_id": trace}))
    headers = dict(record_headers(value))
    assert headers["content-type"] == b"application/json"
    assert headers["loopgate-event-type"] == b"completion"
    assert headers["loopgate-schema-version"] == b"1"
    assert headers["loopgate-event-id"] == str(event.event_id).encode()
    version, trace_id, parent, flags = headers["traceparent"].decode().split("-")
    assert (version, trace_id, flags) == ("00", trace, "01")
    assert re.fullmatch(r"[0-9a-f]{16}", parent)
    assert parent != "0" * 16
    # No valid trace id, no traceparent (the sample events carry "t1").
    assert "traceparent" not in dict(record_headers(to_json(feedback())))
    assert traceparent("0" * 32, event.event_id) is None
    assert traceparent("4BF92F3577B34DA6A3CE929D0E0E4736", event.event_id) is None
    assert traceparent(None, event.event_id) is None


def test_headers_read_the_envelope_whatever_the_body_holds() -> None:
    # A body that spells the envelope's keys inside strings does not fool the reader.
    tricky = completion("lg1.t.m", text='","body":{"type":"feedback"}')
    headers = dict(record_headers(to_json(tricky)))
    assert headers["loopgate-event-type"] == b"completion"
    assert dict(record_headers(b"garbage")) == {"content-type": b"application/json"}


def _kafka_errors() -> Any:
    load_kafka_client()
    import kafka.errors

    return kafka.errors


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("MessageSizeTooLargeError", faults.TOO_LARGE),
        ("RecordListTooLargeError", faults.TOO_LARGE),
        ("InvalidTopicError", faults.INVALID_TOPIC),
        ("TopicAuthorizationFailedError", faults.UNAUTHORIZED),
        ("CorruptRecordError", faults.INVALID_RECORD),
        ("InvalidRecordError", faults.INVALID_RECORD),
        ("InvalidTimestampError", faults.INVALID_RECORD),
        ("KafkaTimeoutError", faults.TRANSIENT),
        ("RequestTimedOutError", faults.TRANSIENT),
        ("LeaderNotAvailableError", faults.TRANSIENT),
        ("NotLeaderForPartitionError", faults.TRANSIENT),
        ("UnknownTopicOrPartitionError", faults.TRANSIENT),
        ("NotEnoughReplicasError", faults.TRANSIENT),
        ("BrokerNotAvailableError", faults.TRANSIENT),
        ("KafkaConnectionError", faults.TRANSIENT),
        ("ClusterAuthorizationFailedError", faults.TRANSIENT),
        ("OutOfOrderSequenceNumberError", faults.TRANSIENT),
        ("UnknownError", faults.UNKNOWN),
    ],
)
def test_each_producer_error_has_a_verdict(name: str, verdict: str) -> None:
    assert faults.classify(getattr(_kafka_errors(), name)()) == verdict


def test_client_side_checks_are_serialisation_errors() -> None:
    assert faults.classify(TypeError("headers must be list-type")) == faults.UNSERIALISABLE
    assert faults.classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate")) == (
        faults.UNSERIALISABLE
    )
    assert faults.valid_topic("loopgate.completions.v1")
    for bad in ("bad topic!", "x" * 250, ".", "..", ""):
        assert not faults.valid_topic(bad)
