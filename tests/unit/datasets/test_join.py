"""The join: order, duplicates, windows, idempotency keys, unreadable lines."""

from __future__ import annotations

from feedback.datasets.join import JoinConfig, JoinStats, join, parse_lines
from feedback.schema import to_json
from tests.unit.datasets.events import completion, feedback


def test_feedback_arriving_before_its_completion_is_joined() -> None:
    c = completion("r1", at=0)
    f = feedback("r1", "thumbs_up", at=5)
    joined = join([f, c], JoinConfig())
    assert [a.completion.body.response_id for a in joined.answers] == ["r1"]
    assert joined.answers[0].feedback == (f,)
    assert joined.stats.orphan_feedback == 0


def test_duplicates_by_event_id_are_dropped() -> None:
    c, f = completion("r1"), feedback("r1", "thumbs_up")
    joined = join([c, f, f, c], JoinConfig())
    assert len(joined.answers) == 1
    assert len(joined.answers[0].feedback) == 1
    assert joined.stats.duplicate_events == 2


def test_feedback_windows_skew_and_late() -> None:
    c = completion("r1", at=1000)
    within_skew = feedback("r1", "thumbs_up", at=1000 - 60)
    too_early = feedback("r1", "thumbs_down", at=1000 - 301)
    late = feedback("r1", "thumbs_down", at=1000 + 3601)
    joined = join(
        [c, within_skew, too_early, late], JoinConfig(skew_s=300, max_feedback_age_s=3600)
    )
    assert joined.answers[0].feedback == (within_skew,)
    assert joined.stats.early_feedback == 1
    assert joined.stats.late_feedback == 1


def test_orphans_idempotency_and_reemitted_completions() -> None:
    c1, c1_again = completion("r1", at=0), completion("r1", at=1)
    f1 = feedback("r1", "rating", value=5, idempotency_key="k", at=3)
    f1_retry = feedback("r1", "rating", value=5, idempotency_key="k", at=4)
    orphan = feedback("r9", "thumbs_up")
    joined = join([orphan, f1_retry, c1_again, f1, c1], JoinConfig())
    assert len(joined.answers) == 1
    assert joined.answers[0].completion == c1  # the earliest completion of an id wins
    assert joined.answers[0].feedback == (f1,)
    stats = joined.stats
    assert (stats.orphan_feedback, stats.duplicate_idempotency, stats.duplicate_completions) == (
        1,
        1,
        1,
    )


def test_unreadable_lines_are_counted_and_skipped() -> None:
    stats = JoinStats()
    lines = [to_json(completion("r1")), b"{not json", b"", b'{"type": "completion"}']
    events = list(parse_lines(lines, stats))
    assert len(events) == 1
    assert (stats.lines, stats.unreadable) == (3, 2)
