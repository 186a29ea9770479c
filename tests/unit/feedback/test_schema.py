"""Event models: round trips, shipped JSON Schemas, ids, keys and topics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest
from pydantic import ValidationError

from feedback.schema import (
    AUDIT_TOPIC,
    COMPLETIONS_TOPIC,
    EVALUATIONS_TOPIC,
    FEEDBACK_KINDS,
    FEEDBACK_TOPIC,
    SCHEMA_DIR,
    FeedbackBody,
    from_json,
    json_schemas,
    render_schema,
    route_of,
    to_json,
    uuid7,
)
from tests.unit.feedback.events import (
    NOW,
    audit,
    completion,
    evaluation,
    failed_completion,
    feedback,
)

SAMPLES = [
    completion(),
    failed_completion(),
    feedback(),
    feedback(kind="rating", value=4),
    audit(),
    evaluation(),
    evaluation(evaluator_kind="reward_model", reason=None, score=-1.25),
]


def shipped(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    return loaded


def test_shipped_schemas_match_the_models() -> None:
    for name, schema in json_schemas().items():
        path = SCHEMA_DIR / f"{name}.json"
        assert path.read_text() == render_schema(schema), (
            f"{path} is stale: run python -m feedback.schema"
        )


def test_regenerate_command_writes_the_same_files(tmp_path: Path) -> None:
    code = "from pathlib import Path; from feedback.schema import write_schemas; "
    code += f"write_schemas(Path({str(tmp_path)!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    for path in SCHEMA_DIR.glob("*.json"):
        assert (tmp_path / path.name).read_text() == path.read_text()


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_round_trip_and_schema(event: object) -> None:
    raw = to_json(event)  # type: ignore[arg-type]
    assert from_json(raw) == event
    data = orjson.loads(raw)
    name = {"completion": "completion", "feedback": "feedback", "evaluation": "evaluation"}.get(
        data["type"], "audit"
    )
    jsonschema.validate(data, shipped(name))


def test_schema_rejects_what_models_reject() -> None:
    data = orjson.loads(to_json(feedback()))
    data["body"]["kind"] = "love"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, shipped("feedback"))
    data = orjson.loads(to_json(completion()))
    data["body"]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, shipped("completion"))


def test_envelope_fields() -> None:
    event = completion()
    data = orjson.loads(to_json(event))
    assert list(data)[:6] == ["event_id", "type", "schema_version", "time", "gateway", "trace_id"]
    assert data["schema_version"] == 1
    assert data["time"] == "2023-11-14T22:13:20.250000Z"
    assert data["event_id"][14] == "7"  # UUIDv7


def test_uuid7_is_time_ordered_and_unique() -> None:
    ids = [uuid7(NOW + i / 1000) for i in range(200)]
    assert len(set(ids)) == 200
    assert [u.int >> 80 for u in ids] == sorted(u.int >> 80 for u in ids)
    assert all(u.version == 7 and u.variant == "specified in RFC 4122" for u in ids)
    assert (uuid7(NOW).int >> 80) == int(NOW * 1000)


def test_keys_and_topics() -> None:
    assert (completion("lg1.a.b").topic, completion("lg1.a.b").key) == (
        COMPLETIONS_TOPIC,
        "lg1.a.b",
    )
    assert (feedback("lg1.c.d").topic, feedback("lg1.c.d").key) == (FEEDBACK_TOPIC, "lg1.c.d")
    assert (audit().topic, audit().key) == (AUDIT_TOPIC, "support-bot")
    assert (evaluation("lg1.e.f").topic, evaluation("lg1.e.f").key) == (
        EVALUATIONS_TOPIC,
        "lg1.e.f",
    )
    for event in SAMPLES:
        assert route_of(orjson.loads(to_json(event))) == (event.topic, event.key)


def test_feedback_kinds_are_the_design_list() -> None:
    assert set(FEEDBACK_KINDS) == {
        "thumbs_up", "thumbs_down", "rating", "edit", "accept", "reject",
        "regenerate", "report", "comment", "preference",
    }  # fmt: skip


def test_preference_names_both_answers_and_the_winner() -> None:
    body = FeedbackBody(
        response_id="lg1.a.x", other_response_id="lg1.b.y", winner="b", app="console",
        kind="preference", source="reviewer", reviewer="ana", queue="side_by_side",
        time_spent_ms=4200,
    )  # fmt: skip
    assert (body.source, body.winner, body.other_response_id) == ("reviewer", "b", "lg1.b.y")
    assert FeedbackBody(response_id="r", app="a", kind="thumbs_up").source == "user"
    with pytest.raises(ValidationError):
        FeedbackBody(response_id="r", app="a", kind="preference", winner="a")
    with pytest.raises(ValidationError):
        FeedbackBody(response_id="r", app="a", kind="preference", other_response_id="s")
    with pytest.raises(ValidationError):
        FeedbackBody(response_id="r", app="a", kind="preference", other_response_id="s", winner="c")
    with pytest.raises(ValidationError):
        FeedbackBody(response_id="r", app="a", kind="thumbs_up", source="bot")


def test_metadata_is_bounded() -> None:
    with pytest.raises(ValidationError):
        FeedbackBody(
            response_id="r", app="a", kind="comment", metadata={f"k{i}": i for i in range(33)}
        )
    with pytest.raises(ValidationError):
        FeedbackBody(response_id="r", app="a", kind="comment", metadata={"k": "x" * 1025})
    with pytest.raises(ValidationError):
        FeedbackBody(response_id="r", app="a", kind="comment", metadata={"k": {"nested": 1}})


def test_evaluation_schema_rejects_an_unknown_evaluator_kind_and_missing_score() -> None:
    data = orjson.loads(to_json(evaluation()))
    data["body"]["evaluator_kind"] = "vibes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, shipped("evaluation"))
    data = orjson.loads(to_json(evaluation()))
    del data["body"]["score"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, shipped("evaluation"))
