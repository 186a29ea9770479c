"""Votes on the same (prompt, answer) fold into a label: majority, margin, minimum votes,
reviewers first, preferences and reviewer corrections as rows (docs/datasets.md's example)."""

from __future__ import annotations

from typing import Any

from feedback.datasets.build import BuildConfig, Row, build
from feedback.datasets.votes import Vote, VoteConfig, decide, tally
from feedback.schema import Event
from tests.unit.datasets.events import completion, feedback


def rows(events: list[Event], **votes: Any) -> dict[str, list[Row]]:
    """Every row by kind, all units in train."""
    config = BuildConfig.model_validate({"test_fraction": 0.0, "rules": {"votes": votes}})
    built = build(events, config)
    return {kind: built.rows[(kind, "train")] for kind in ("dpo", "kto", "sft")}


def crowd(ups: int, downs: int, *, text: str = "Click 'forgot password'.", variant: str = "control",
          start: int = 0, prefix: str = "r") -> list[Event]:  # fmt: skip
    """`ups + downs` users asking the same question, getting the same answer, voting."""
    out: list[Event] = []
    for i in range(ups + downs):
        rid = f"{prefix}{start + i}"
        out.append(completion(rid, unit=f"{prefix}u{start + i}", text=text, variant=variant,
                              at=start + i))  # fmt: skip
        out.append(feedback(rid, "thumbs_up" if i < ups else "thumbs_down", at=start + i + 10))
    return out


def v(voter: str, polarity: int, at: str, source: str = "user") -> Vote:
    return Vote(
        voter, polarity, source, (at, voter), "thumbs_up" if polarity > 0 else "thumbs_down"
    )


def test_the_worked_example_of_the_docs() -> None:
    # 7 users on one answer: 5 up, 2 down -> True, weight 5/7.
    (row,) = rows(crowd(5, 2))["kto"]
    assert (row["label"], row["votes"], row["votes_against"]) == (True, 5, 2)
    assert row["weight"] == round(5 / 7, 6)
    assert row["source"] == "user"
    assert len(row["unit_hashes"]) == 7
    # A margin of 4 votes: 5 - 2 = 3 is too close.
    assert rows(crowd(5, 2), margin=4)["kto"] == []
    # At least 8 votes: 7 is too few.
    assert rows(crowd(5, 2), min_votes=8)["kto"] == []
    # One reviewer's thumbs down outranks the 5 users.
    reviewed = [
        *crowd(5, 2),
        feedback("r0", "thumbs_down", at=30, source="reviewer", reviewer="rita"),
    ]
    (row,) = rows(reviewed)["kto"]
    assert (row["label"], row["source"], row["votes"], row["votes_against"]) == (
        False, "reviewer", 1, 0,
    )  # fmt: skip
    # Without precedence the reviewer is one more voter.
    (row,) = rows(reviewed, reviewer_precedence=False)["kto"]
    assert (row["label"], row["votes"], row["votes_against"]) == (True, 5, 3)


def test_one_voter_one_vote_the_latest_counts() -> None:
    assert tally([v("u1", 1, "1"), v("u1", -1, "2"), v("u2", -1, "1")], VoteConfig()).negative == 2
    counted = tally([v("u1", 1, "2"), v("u1", -1, "1")], VoteConfig())
    assert (counted.positive, counted.negative) == (1, 0)


def test_reviewers_who_split_evenly_leave_it_to_everyone() -> None:
    votes = [v("rev:a", 1, "1", "reviewer"), v("rev:b", -1, "2", "reviewer"),
             v("u1", -1, "3"), v("u2", -1, "4")]  # fmt: skip
    counted = tally(votes, VoteConfig())
    assert (counted.positive, counted.negative, counted.source) == (1, 3, "user")
    assert decide(counted, VoteConfig()) == -1


def test_judges_count_only_when_asked() -> None:
    votes = [v("judge:j", 1, "1", "judge"), v("u1", -1, "2")]
    assert decide(tally(votes, VoteConfig()), VoteConfig()) == -1
    both = VoteConfig(sources=frozenset({"user", "judge"}))
    assert decide(tally(votes, both), both) == "tie"


def test_only_true_ties_are_dropped_by_default() -> None:
    out = rows([*crowd(3, 3), *crowd(2, 1, text="other answer", start=100)])
    ((row),) = out["kto"]
    assert row["completion"][0]["content"] == "other answer"
    assert decide(tally([v("a", 1, "1"), v("b", -1, "2")], VoteConfig()), VoteConfig()) == "tie"


def test_variants_pair_the_majorities_of_two_variants() -> None:
    events = [
        *crowd(4, 1, text="canary answer", variant="canary"),
        *crowd(1, 3, text="control answer", variant="control", start=100),
    ]
    (pair,) = rows(events)["dpo"]
    assert pair["rule"] == "variants"
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == (
        "canary answer", "control answer",
    )  # fmt: skip
    # Votes for the pair: 4 liked the chosen, 3 disliked the rejected; 1 + 1 the other way.
    assert (pair["votes"], pair["votes_against"]) == (7, 2)
    assert (pair["variant"], pair["rejected_variant"]) == ("canary", "control")
    assert len(pair["response_ids"]) == 9
    kto = {r["completion"][0]["content"]: r["label"] for r in rows(events)["kto"]}
    assert kto == {"canary answer": True, "control answer": False}


def test_preferences_become_pairs_with_provenance() -> None:
    events: list[Event] = [
        completion("a1", unit="u1", text="answer A", variant="control"),
        completion("b1", unit="u1", text="answer B", variant="canary", at=1),
        feedback(
            "a1",
            "preference",
            other_response_id="b1",
            winner="b",
            source="reviewer",
            reviewer="rita",
            queue="q1",
            time_spent_ms=4000,
        ),
        completion("a2", unit="u2", text="answer A", variant="control", at=2),
        completion("b2", unit="u2", text="answer B", variant="canary", at=3),
        feedback("a2", "preference", other_response_id="b2", winner="b", at=13),
        completion("a3", unit="u3", text="answer A", at=4),
        completion("b3", unit="u3", text="answer C", at=5),
        feedback("a3", "preference", other_response_id="b3", winner="tie", at=14),
        feedback("a3", "preference", other_response_id="nowhere", winner="a", at=15),
    ]
    config = BuildConfig(test_fraction=0.0)
    built = build(events, config)
    (pair,) = built.rows[("dpo", "train")]
    assert pair["rule"] == "preference"
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == (
        "answer B",
        "answer A",
    )
    assert pair["response_ids"] == ["b1", "a1"]  # chosen first: the earliest of two alike rows
    assert (pair["variant"], pair["rejected_variant"]) == ("canary", "control")
    # The reviewer's preference outranks (and here agrees with) the user's.
    assert (pair["source"], pair["votes"]) == ("reviewer", 1)
    assert built.dropped["preference_tie"] == 1
    assert built.dropped["preference_unmatched"] == 1


def test_a_reviewer_correction_outranks_a_user_edit_and_becomes_sft_and_dpo() -> None:
    events: list[Event] = [
        completion("r1", text="old"),
        feedback("r1", "edit", edited_text="user's edit", at=10),
        feedback(
            "r1", "edit", edited_text="reviewer's edit", at=5, source="reviewer", reviewer="rita"
        ),
    ]
    out = rows(events)
    (pair,) = out["dpo"]
    assert pair["chosen"][0]["content"] == "reviewer's edit"
    assert pair["source"] == "reviewer"
    (sft,) = out["sft"]
    assert sft["messages"][-1]["content"] == "reviewer's edit"
    (pair,) = rows(events, reviewer_precedence=False)["dpo"]
    assert pair["chosen"][0]["content"] == "user's edit"  # then the latest edit wins


def test_pairs_in_both_directions_are_settled_by_votes() -> None:
    events: list[Event] = [
        completion("r1", unit="u1", text="A"),
        feedback("r1", "edit", edited_text="B"),
        completion("r2", unit="u2", text="B", at=1),
        feedback("r2", "edit", edited_text="A", at=11),
        completion("r3", unit="u3", text="B", at=2),
        feedback("r3", "edit", edited_text="A", at=12),
    ]
    built = build(events, BuildConfig(test_fraction=0.0))
    (pair,) = built.rows[("dpo", "train")]
    assert (pair["chosen"][0]["content"], pair["votes"], pair["votes_against"]) == ("A", 2, 1)
    assert built.dropped["dpo_outvoted"] == 1
    assert built.dropped["dpo_duplicate"] == 1


def test_kto_class_weights_balance_the_vote_weighted_labels() -> None:
    from feedback.datasets.manifest import kto_weights

    events = [
        *crowd(5, 2),  # True, weight 5/7
        *crowd(0, 1, text="no", start=100, prefix="x"),  # False, weight 1
        *crowd(0, 1, text="nope", start=200, prefix="y"),  # False, weight 1
    ]
    built = build(events, BuildConfig(test_fraction=0.0))
    assert sorted(r["label"] for r in built.rows[("kto", "train")]) == [False, False, True]
    weights = kto_weights(built)
    assert weights == {"desirable_weight": round(2 / (5 / 7), 4), "undesirable_weight": 1.0}
    only_true = build(crowd(2, 0), BuildConfig(test_fraction=0.0))
    assert kto_weights(only_true) is None
