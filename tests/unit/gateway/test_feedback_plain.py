"""The feedback route's plain path gives what the pydantic models would: items, fingerprints,
event bodies (the event is a plain dict on the request path; FeedbackEvent must accept it)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

import gateway.recorder as recorder_module
from feedback.schema import FeedbackBody, FeedbackEvent, FeedbackKind
from gateway.events import feedback_event
from gateway.ids import Claims
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.routes.feedback import (
    FeedbackIn,
    Judge,
    _event_body,
    item_fingerprint,
    model_fingerprint,
)
from gateway.routes.feedback_raw import consent_header, plain_item

VALID: list[dict[str, Any]] = [
    {"response_id": "lg1.a.b", "kind": "thumbs_up"},
    {"response_id": "lg1.a.b", "kind": "rating", "value": 4},
    {"response_id": "lg1.a.b", "kind": "rating", "value": 4.5, "comment": "ok"},
    {"response_id": "lg1.a.b", "kind": "edit", "edited_text": 'é\u0001\n"x" \u2028 ✓'},
    {"response_id": "lg1.a.b", "kind": "report", "category": "pii", "idempotency_key": "k"},
    {"response_id": "lg1.a.b", "kind": "comment", "comment": "hi", "value": -1e20},
    {"response_id": "a", "kind": "preference", "other_response_id": "b", "winner": "tie"},
    {
        "response_id": "lg1.a.b",
        "kind": "accept",
        "metadata": {"s": "v", "i": 2**62, "f": 0.1, "b": True, "n": None},
        "value": None,
        "winner": None,
    },
]
# Valid or not, these are left to FeedbackIn.
UNUSUAL: list[Any] = [
    [],
    {"response_id": "x", "kind": "rating", "value": True},
    {"response_id": "x", "kind": "rating", "value": "4"},
    {"response_id": "x", "kind": "rating", "value": 2**60},
    {"response_id": "x", "kind": "thumbs_up", "metadata": None},
    {"response_id": "x", "kind": "thumbs_up", "metadata": {"k": [1]}},
    {"response_id": "x", "kind": "thumbs_up", "metadata": {"k": "v" * 1025}},
    {"response_id": "x", "kind": "thumbs_up", "other": 1},
    {"response_id": "x", "kind": "rating", "value": 6},
    {"response_id": "x", "kind": {"k": 1}},
    {"response_id": "x", "kind": "thumbs_up", "winner": ["a"]},
]


@pytest.mark.parametrize("data", VALID)
def test_plain_item_is_feedbackins_dump(data: dict[str, Any]) -> None:
    model = FeedbackIn.model_validate(data)
    item = plain_item(data)
    assert item == model.model_dump()
    assert list(item) == list(model.model_dump())
    assert item_fingerprint(item) == model_fingerprint(model)


@pytest.mark.parametrize("data", UNUSUAL)
def test_unusual_shapes_go_to_pydantic(data: Any) -> None:
    assert plain_item(data) is None


@pytest.mark.parametrize("kind", [*get_args(FeedbackKind), "nope", 1, None])
@pytest.mark.parametrize("response_id", ["lg1.a.b", "", "x" * 2049, 5])
def test_two_key_items_are_feedbackins_dump_or_left_to_it(kind: Any, response_id: Any) -> None:
    for data in ({"response_id": response_id, "kind": kind}, {"kind": kind, "value": 3}):
        try:
            expected: dict[str, Any] | None = FeedbackIn.model_validate(data).model_dump()
        except ValidationError:
            expected = None
        item = plain_item(data)
        if item is not None:
            assert item == expected
            assert list(item) == list(expected or {})


@pytest.mark.parametrize("judge", [None, Judge("reviewer", "ana", "q1", 1200)])
@pytest.mark.parametrize("consent", ["full", "none"])
def test_event_body_is_feedbackbodys_dump(judge: Judge | None, consent: str) -> None:
    claims = Claims("flag", "b", 3, "shop", "u" * 32, 1_700_000_000, "nonce-1")
    for data in VALID:
        item = plain_item(data)
        assert item is not None
        body = _event_body(item, claims, "a" if item["winner"] else None, consent, judge)
        model = FeedbackBody.model_validate(body)
        assert model.model_dump() == body
        assert list(model.model_dump()) == list(body)
        event = feedback_event(body, instance="gw", now=1_700_000_100.5, trace_id=None)
        created = FeedbackEvent.create(model, gateway="gw", now=1_700_000_100.5)
        expected = created.model_dump() | {"event_id": event.data["event_id"]}
        assert FeedbackEvent.model_validate(event.data).model_dump() == expected
        assert list(event.data) == list(expected)
        assert (event.topic, event.key, event.type) == (created.topic, created.key, "feedback")


def test_the_first_consent_header_counts_as_fastapi_read_it() -> None:
    raw = [(b"host", b"x"), (b"x-loopgate-consent", b"none"), (b"x-loopgate-consent", b"full")]
    assert consent_header(raw) == "none"
    assert consent_header([(b"host", b"x")]) is None


class CollectingPipeline:
    """Stands in for EventPipeline: keeps what is emitted."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)


def test_feedback_counts_stay_right_past_the_children_cache_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recorder_module, "_FEEDBACK_CHILDREN_MAX", 2)
    registry = CollectorRegistry()
    recorder = Recorder(
        instance="gw", metrics=Metrics(registry), upstream_metrics=None,  # type: ignore[arg-type]
        signer=None, observer=None,  # type: ignore[arg-type]
    )  # fmt: skip
    pipeline = CollectingPipeline()
    item = plain_item({"response_id": "lg1.a.b", "kind": "thumbs_up"})
    assert item is not None
    labels = [("f", "a", "thumbs_up"), ("f", "b", "thumbs_up"), ("g", "a", "accept")] * 3
    for flag, variant, kind in labels:
        claims = Claims(flag, variant, 1, "shop", "u" * 32, 1_700_000_000, "nonce-1")
        body = _event_body(item | {"kind": kind}, claims, None, "full", None)
        recorder.feedback_recorded(body, pipeline, 1_700_000_001.0)  # type: ignore[arg-type]
    assert len(pipeline.events) == 9
    for flag, variant, kind in set(labels):
        names = {"flag": flag, "variant": variant, "kind": kind}
        assert registry.get_sample_value("loopgate_feedback_total", names) == 3
