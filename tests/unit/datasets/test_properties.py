"""Hypothesis properties of a build over random scenarios."""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback.datasets.build import SPLITS, BuildConfig, Built, build
from feedback.datasets.external import build_external
from feedback.datasets.join import JoinStats
from feedback.datasets.rules import KINDS
from feedback.redact import Redactor
from feedback.schema import Event, to_json
from feedback.scrub import scrub
from tests.unit.datasets.events import completion, feedback

SECRET = "sk-proj-" + "Zq9Xw8Vu7Ts6Rq5Po4Nm3Lk2"
TEXTS = ["yes", "no", "maybe", f"the key is {SECRET}", "Call 555"]
KINDS_FB = [
    "thumbs_up",
    "thumbs_down",
    "rating",
    "edit",
    "accept",
    "reject",
    "regenerate",
    "report",
    "preference",
]

feedback_st = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(KINDS_FB),
        "at": st.integers(0, 50),
        "value": st.integers(1, 5),
        "edited": st.sampled_from(TEXTS),
        "source": st.sampled_from(["user", "user", "reviewer"]),
        "reviewer": st.sampled_from(["rita", "sam"]),
        "other": st.integers(0, 13),
        "winner": st.sampled_from(["a", "b", "tie", "both_bad"]),
    }
)
answer_st = st.fixed_dictionaries(
    {
        "unit": st.sampled_from([f"{i:032x}" for i in range(6)]),
        "prompt": st.sampled_from(["p0", "p1", f"p2 {SECRET}"]),
        "variant": st.sampled_from(["control", "canary"]),
        "text": st.sampled_from(TEXTS),
        "at": st.integers(0, 100),
        "feedback": st.lists(feedback_st, max_size=3),
        "scrubbed": st.booleans(),
    }
)


def events_of(answers: list[dict[str, Any]]) -> list[Event]:
    """The scenario as events; some redacted at emission as the gateway does, some raw."""
    redactor = Redactor()
    out: list[Event] = []
    for index, spec in enumerate(answers):
        rid = f"r{index}"
        made: list[Event] = [
            completion(rid, unit=spec["unit"], prompt=spec["prompt"], text=spec["text"],
                       variant=spec["variant"], at=spec["at"]),
        ]  # fmt: skip
        for fb in spec["feedback"]:
            extra: dict[str, Any] = {}
            if fb["kind"] == "rating":
                extra["value"] = fb["value"]
            if fb["kind"] == "edit":
                extra["edited_text"] = fb["edited"]
            if fb["kind"] == "preference":
                extra.update(other_response_id=f"r{fb['other']}", winner=fb["winner"])
            if fb["source"] == "reviewer":
                extra.update(source="reviewer", reviewer=fb["reviewer"])
            made.append(feedback(rid, fb["kind"], at=spec["at"] + fb["at"], **extra))
        if spec["scrubbed"]:
            made = [scrub(event, redactor)[0] for event in made]
        out.extend(made)
    return out


def all_rows(built: Built) -> list[dict[str, Any]]:
    """Every row of every file."""
    return [row for kind in KINDS for split in SPLITS for row in built.rows[(kind, split)]]


CONFIG = BuildConfig(test_fraction=0.5)
scenarios = st.lists(answer_st, min_size=1, max_size=14)
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(scenarios)
def test_no_pair_prefers_an_answer_to_itself(answers: list[dict[str, Any]]) -> None:
    built = build(events_of(answers), CONFIG)
    for split in SPLITS:
        for row in built.rows[("dpo", split)]:
            assert row["chosen"] != row["rejected"]
            assert row["chosen"][0]["content"].strip() != row["rejected"][0]["content"].strip()


@fast
@given(scenarios)
def test_train_and_test_share_no_unit(answers: list[dict[str, Any]]) -> None:
    built = build(events_of(answers), CONFIG)
    sides = {
        split: {
            u for kind in KINDS for row in built.rows[(kind, split)] for u in row["unit_hashes"]
        }
        for split in SPLITS
    }
    assert not sides["train"] & sides["test"]


@fast
@given(scenarios, st.randoms(use_true_random=False))
def test_same_events_in_any_order_give_the_same_hash(
    answers: list[dict[str, Any]], rnd: random.Random
) -> None:
    events = events_of(answers)
    first = build(events, CONFIG)
    again = events + rnd.sample(events, k=len(events) // 2)  # redelivered duplicates
    rnd.shuffle(again)
    second = build(again, CONFIG)
    assert second.content_hash == first.content_hash
    assert second.rows == first.rows


@fast
@given(scenarios)
def test_a_planted_secret_never_reaches_the_outputs(answers: list[dict[str, Any]]) -> None:
    built = build(events_of(answers), CONFIG)
    text = orjson.dumps(all_rows(built)).decode()
    assert SECRET not in text
    assert "sk-proj-" not in text


@fast
@given(scenarios, st.integers(1, 5), st.randoms(use_true_random=False))
def test_the_partitioned_build_gives_the_in_memory_rows(
    answers: list[dict[str, Any]], parts: int, rnd: random.Random
) -> None:
    events = events_of(answers)
    expected = build(events, CONFIG)
    lines = [to_json(e) for e in events]
    rnd.shuffle(lines)
    stats = JoinStats()
    got = build_external(lines, CONFIG, stats=stats, parts=parts)
    assert got.rows == expected.rows
    assert got.content_hash == expected.content_hash
    assert stats.completions == expected.join.completions
    assert stats.unjudged == expected.join.unjudged
