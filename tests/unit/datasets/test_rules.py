"""Each rule, the conflict rule, filters, and the safety and consent checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from feedback.datasets.build import BuildConfig, Row, build
from feedback.datasets.rules import Filters, RuleConfig
from feedback.schema import Event
from tests.unit.datasets.events import T0, completion, feedback

SYS = {"role": "system", "content": "You are a helpful support bot."}


def rows(events: list[Event], **config: Any) -> dict[str, list[Row]]:
    """All rows by kind (everything in train)."""
    built = build(events, BuildConfig(test_fraction=0.0, **config))
    assert all(not built.rows[(kind, "test")] for kind in ("dpo", "kto", "sft"))
    return {kind: built.rows[(kind, "train")] for kind in ("dpo", "kto", "sft")}


def pairs(events: list[Event], **config: Any) -> list[tuple[str, str, str]]:
    """(rule, chosen, rejected) of every DPO row."""
    return [
        (r["rule"], r["chosen"][0]["content"], r["rejected"][0]["content"])
        for r in rows(events, **config)["dpo"]
    ]


def labels(events: list[Event], **config: Any) -> list[tuple[str, str, bool]]:
    """(rule, completion, label) of every KTO row."""
    return [
        (r["rule"], r["completion"][0]["content"], r["label"])
        for r in rows(events, **config)["kto"]
    ]


def test_edit_makes_a_trl_pair_and_an_sft_row() -> None:
    out = rows([completion("r1", text="old"), feedback("r1", "edit", edited_text="new")])
    (pair,) = out["dpo"]
    assert pair["prompt"] == [SYS, {"role": "user", "content": "How do I reset my password?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "new"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "old"}]
    assert (pair["rule"], pair["flag"], pair["variant"], pair["app"]) == (
        "edit",
        "support-bot",
        "control",
        "app-1",
    )
    assert pair["response_ids"] == ["r1"]
    (sft,) = out["sft"]
    assert sft["messages"][-1] == {"role": "assistant", "content": "new"}
    assert sft["rule"] == "edit"


def test_the_last_edit_wins_and_useless_edits_are_skipped() -> None:
    c = completion("r1", text="old")
    assert pairs(
        [
            c,
            feedback("r1", "edit", edited_text="v2", at=20),
            feedback("r1", "edit", edited_text="v1", at=10),
        ]
    ) == [("edit", "v2", "old")]
    assert pairs([c, feedback("r1", "edit", edited_text=" old ")]) == []
    assert pairs([c, feedback("r1", "edit", consent="none")]) == []
    assert pairs([c, feedback("r1", "edit", edited_text="[CARD]", safety={"card": 1})]) == []


def test_regenerate_then_liked_pairs_new_over_old() -> None:
    events: list[Event] = [
        completion("a", text="first try", at=0),
        feedback("a", "regenerate", at=5),
        completion("b", text="second try", at=6),
        feedback("b", "thumbs_up", at=20),
    ]
    assert pairs(events) == [("regenerate", "second try", "first try")]
    (row,) = rows(events)["dpo"]
    assert row["response_ids"] == ["b", "a"]


def test_regenerate_needs_a_liked_answer_to_the_same_prompt_from_the_same_unit() -> None:
    base: list[Event] = [completion("a", text="first", at=0), feedback("a", "regenerate", at=5)]
    not_liked = [*base, completion("b", text="second", at=6)]
    other_unit = [*base, completion("b", text="second", unit="u2", at=6), feedback("b", "accept")]
    other_prompt = [
        *base,
        completion("b", text="second", prompt="Something else", at=6),
        feedback("b", "accept"),
    ]
    too_late = [*base, completion("b", text="second", at=4000), feedback("b", "accept", at=4001)]
    for events in (not_liked, other_unit, other_prompt, too_late):
        assert pairs(events) == []
    # the first later answer is the regenerated one, not a liked one further on
    chain = [*base, completion("b", text="second", at=6), completion("c", text="third", at=7)]
    assert pairs([*chain, feedback("c", "thumbs_up", at=9)]) == []


def test_variants_pair_liked_and_disliked_answers_to_one_prompt() -> None:
    events: list[Event] = [
        completion("c1", unit="u1", variant="control", text="meh answer"),
        feedback("c1", "thumbs_down"),
        completion("k1", unit="u2", variant="canary", text="great answer"),
        feedback("k1", "thumbs_up"),
    ]
    assert pairs(events) == [("variants", "great answer", "meh answer")]
    (row,) = rows(events)["dpo"]
    assert (row["variant"], row["rejected_variant"]) == ("canary", "control")
    assert sorted(row["unit_hashes"]) == ["u1", "u2"]
    same_variant: list[Event] = [
        completion("c1", unit="u1", text="meh answer"),
        feedback("c1", "thumbs_down"),
        completion("c2", unit="u2", text="great answer"),
        feedback("c2", "thumbs_up"),
    ]
    assert pairs(same_variant) == []


def test_kto_labels_from_thumbs_accept_reject_and_ratings() -> None:
    events: list[Event] = [
        completion("r1", text="t1", prompt="p1"),
        feedback("r1", "thumbs_up"),
        completion("r2", text="t2", prompt="p2"),
        feedback("r2", "reject"),
        completion("r3", text="t3", prompt="p3"),
        feedback("r3", "rating", value=5),
        completion("r4", text="t4", prompt="p4"),
        feedback("r4", "rating", value=3),
        completion("r5", text="t5", prompt="p5"),
        feedback("r5", "rating", value=1),
        completion("r6", text="t6", prompt="p6"),
        feedback("r6", "comment", comment="hmm"),
    ]
    assert sorted(labels(events)) == [
        ("rating", "t3", True),
        ("rating", "t5", False),
        ("reject", "t2", False),
        ("thumbs_up", "t1", True),
    ]
    strict = RuleConfig(rating_positive_min=5, rating_negative_max=3)
    assert ("rating", "t4", False) in labels(events, rules=strict)


def test_latest_signal_wins_and_a_report_bars_positive_use() -> None:
    up_then_down: list[Event] = [
        completion("r1"),
        feedback("r1", "thumbs_up", at=5),
        feedback("r1", "thumbs_down", at=6),
    ]
    down_then_up: list[Event] = [
        completion("r1"),
        feedback("r1", "thumbs_down", at=5),
        feedback("r1", "thumbs_up", at=6),
    ]
    assert [x[2] for x in labels(up_then_down)] == [False]
    assert [x[2] for x in labels(down_then_up)] == [True]
    reported: list[Event] = [
        completion("r1"),
        feedback("r1", "accept"),
        feedback("r1", "report", category="harm"),
    ]
    out = rows(reported)
    assert out["kto"] == out["sft"] == []


def test_sft_takes_accepted_answers() -> None:
    out = rows([completion("r1", text="good"), feedback("r1", "accept")])
    assert [r["messages"][-1]["content"] for r in out["sft"]] == ["good"]
    assert rows([completion("r1"), feedback("r1", "thumbs_up")])["sft"] == []
    wider = RuleConfig(sft_kinds=frozenset({"accept", "thumbs_up"}))
    assert len(rows([completion("r1"), feedback("r1", "thumbs_up")], rules=wider)["sft"]) == 1


def test_filters_by_time_flag_variant_app_and_kind() -> None:
    events: list[Event] = [
        completion("r1", text="t1", prompt="p1", at=0),
        feedback("r1", "thumbs_up", at=1),
        completion(
            "r2", text="t2", prompt="p2", at=100, variant="canary", flag="other", app="app-2"
        ),
        feedback("r2", "accept", at=101),
    ]

    def kept(**filters: Any) -> list[str]:
        return sorted(x[1] for x in labels(events, filters=Filters(**filters)))

    assert kept() == ["t1", "t2"]
    assert kept(since=datetime.fromtimestamp(T0 + 50, UTC)) == ["t2"]
    assert kept(until=datetime.fromtimestamp(T0 + 50, UTC)) == ["t1"]
    assert kept(flags=frozenset({"other"})) == ["t2"]
    assert kept(variants=frozenset({"control"})) == ["t1"]
    assert kept(apps=frozenset({"app-2"})) == ["t2"]
    assert kept(kinds=frozenset({"accept"})) == ["t2"]


def test_consent_none_unsafe_findings_and_errors_are_dropped() -> None:
    events: list[Event] = [
        completion("r1", prompt="p1", consent="none", request=None, response=None),
        feedback("r1", "thumbs_up"),
        completion("r2", prompt="p2", safety={"api_key": 1}),
        feedback("r2", "thumbs_up"),
        completion("r3", prompt="p3", safety={"email": 1}),
        feedback("r3", "thumbs_up"),
        completion("r4", prompt="p4", status="error", response=None),
        feedback("r4", "thumbs_up"),
    ]
    built = build(events, BuildConfig(test_fraction=0.0))
    assert [r["response_ids"] for r in built.rows[("kto", "train")]] == [["r3"]]
    assert (built.dropped["consent_none"], built.dropped["unsafe_completion"]) == (1, 1)
    assert built.dropped["not_ok"] == 1
