"""Sealing and opening event content: round trips, erasure, tampering, shipped schemas."""

from __future__ import annotations

import json
import os
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.privacy import ERASED, KeyRing, SealError, UnitKey, open_event
from feedback.privacy.keys import KeyCache
from feedback.privacy.reading import ErasureCounts, open_lines
from feedback.privacy.seal import seal_event, sealable
from feedback.schema import SCHEMA_DIR, RequestContent, ResponseContent, from_json, to_json
from tests.unit.feedback.events import completion, failed_completion, feedback

UNIT = "0" * 32


def _dict(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(to_json(event))
    return data


def _sealed(event: Any, key: UnitKey) -> dict[str, Any]:
    data = _dict(event)
    assert sealable(data) == UNIT
    assert seal_event(data, key, os.urandom(12))
    return dict(orjson.loads(orjson.dumps(data)))  # as a reader gets it from the wire


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    return loaded


SAMPLES = {
    "completion": completion(text="my card is secret-text-1"),
    "failed": failed_completion(),
    "feedback": feedback(unit_hash=UNIT, edited_text="secret edit", comment="secret comment"),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_sealed_content_is_unreadable_and_opens_back_exactly(name: str) -> None:
    event = SAMPLES[name]
    key = UnitKey.new()
    sealed = _sealed(event, key)
    raw = orjson.dumps(sealed)
    for secret in (b"secret-text-1", b"secret edit", b"secret comment", b"be brief"):
        assert secret not in raw
    # The sealed form is a valid event of the shipped schema, metadata intact.
    jsonschema.validate(sealed, _schema(sealed["type"]))
    parsed = from_json(raw)
    assert parsed.body.model_dump(exclude={"sealed", "request", "response", "error",
        "edited_text", "comment"}) == event.body.model_dump(exclude={"sealed", "request",
        "response", "error", "edited_text", "comment"})  # fmt: skip
    opened = open_event(sealed, KeyRing({UNIT: key}))
    assert opened == _dict(event)
    assert "erased" not in opened


def test_a_forgotten_unit_reads_erased_and_keeps_its_metadata() -> None:
    key = UnitKey.new()
    sealed = _sealed(SAMPLES["completion"], key)
    for keys in (KeyRing(), KeyRing({UNIT: UnitKey.new()})):  # gone, or a new key since
        erased = open_event(sealed, keys)
        assert erased["erased"] is True
        body = erased["body"]
        assert body["request"]["messages"] == ERASED
        assert body["response"]["text"] == ERASED
        assert body["request"]["prompt"] is None  # it had none: nothing to erase
        assert (body["variant"], body["unit_hash"], body["usage"]["total_tokens"]) == (
            "canary",
            UNIT,
            12,
        )
        assert b"secret-text-1" not in orjson.dumps(erased)
    assert "erased" not in sealed  # the caller's dict is not changed


def test_events_never_sealed_pass_through() -> None:
    for event in (_dict(completion()), _dict(feedback(unit_hash=None)), {"type": "x"}):
        assert open_event(event, KeyRing()) is event


def test_nothing_to_seal_without_content_unit_or_consent() -> None:
    assert sealable(_dict(feedback(unit_hash=None))) is None
    assert sealable(_dict(completion(consent="none"))) is None
    data = _dict(feedback(unit_hash=UNIT, kind="thumbs_up", edited_text=None, comment=None))
    assert not seal_event(data, UnitKey.new(), os.urandom(12))
    assert data["body"]["sealed"] is None


def test_content_moved_to_another_event_or_altered_does_not_open() -> None:
    key = UnitKey.new()
    sealed = _sealed(SAMPLES["completion"], key)
    moved = {**sealed, "event_id": str(_dict(completion())["event_id"])}
    with pytest.raises(SealError):
        open_event(moved, KeyRing({UNIT: key}))
    altered = json.loads(json.dumps(sealed))
    text = altered["body"]["sealed"]["ciphertext"]
    # A different first character always changes the bytes (a fixed "A" was a no-op 1 run in 64).
    altered["body"]["sealed"]["ciphertext"] = ("B" if text[0] == "A" else "A") + text[1:]
    with pytest.raises(SealError):
        open_event(altered, KeyRing({UNIT: key}))


def test_key_cache_is_bounded_and_entries_expire() -> None:
    now = [0.0]
    cache = KeyCache(size=2, ttl_s=10, clock=lambda: now[0])
    keys = [UnitKey.new() for _ in range(3)]
    for index, key in enumerate(keys):
        cache.put(f"u{index}", key)
    assert len(cache) == 2
    assert cache.lookup("u0") == (False, None)  # least recently used went first
    assert cache.lookup("u2") == (True, keys[2])
    now[0] = 11.0
    assert cache.lookup("u2") == (False, None)
    cache.put("gone", None)
    assert cache.lookup("gone") == (True, None)  # "no key" is remembered too


LEAF = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
JSON = st.one_of(
    LEAF,
    st.lists(LEAF, max_size=4),
    st.dictionaries(st.text(max_size=8), LEAF | st.lists(LEAF, max_size=3), max_size=4),
)


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.dictionaries(st.text(max_size=8), JSON, max_size=4), max_size=4),
    text=st.text(max_size=200),
    edited=st.one_of(st.none(), st.text(min_size=1, max_size=100)),
)
def test_any_content_opens_back_to_itself(
    messages: list[dict[str, Any]], text: str, edited: str | None
) -> None:
    key = UnitKey.new()
    keys = KeyRing({UNIT: key})
    for event in (
        completion(request=RequestContent(messages=messages), response=ResponseContent(text=text)),
        feedback(unit_hash=UNIT, edited_text=edited, comment=text or None),
    ):
        data = _dict(event)
        seal_event(data, key, os.urandom(12))
        wire = orjson.loads(orjson.dumps(data))
        assert open_event(wire, keys) == _dict(event)


def test_open_lines_restores_skips_forgotten_units_and_counts_them() -> None:
    kept, gone = UnitKey.new(), UnitKey.new()
    other = "f" * 32
    alive = _sealed(SAMPLES["completion"], kept)
    erased = _dict(completion(text="gone-text", unit_hash=other))
    seal_event(erased, gone, os.urandom(12))
    pretty = json.dumps(alive, indent=1).replace("\n", " ").encode()  # spaces after colons
    plain = _dict(feedback())
    lines = [orjson.dumps(alive), pretty, orjson.dumps(erased), orjson.dumps(plain)]
    counts = ErasureCounts()
    out = [orjson.loads(line) for line in open_lines(lines, KeyRing({UNIT: kept}), counts)]
    assert out == [_dict(SAMPLES["completion"])] * 2 + [plain]
    assert (counts.erased_events, counts.erased_units) == (1, {other})


def test_content_too_large_for_kafka_is_cut_before_sealing() -> None:
    """Ciphertext cannot be cut by the Kafka sink afterwards: the sealer cuts the plain text."""
    event = completion(text="word " * 60_000)
    key = UnitKey.new()
    data = _dict(event)
    assert seal_event(data, key, os.urandom(12), max_plain=20_000) == "truncated"
    wire = orjson.dumps(data)
    assert len(wire) < 20_000 * 4 // 3 + 4096  # base64 of at most max_plain, plus metadata
    jsonschema.validate(orjson.loads(wire), _schema("completion"))
    opened = open_event(orjson.loads(wire), KeyRing({UNIT: key}))
    text = opened["body"]["response"]["text"]
    assert text.startswith("answer to word word")
    assert text.endswith("[truncated by loopgate: 300010 bytes]")
    # Under the limit nothing is cut.
    small = _dict(completion(text="short"))
    assert seal_event(small, key, os.urandom(12), max_plain=20_000) is True
