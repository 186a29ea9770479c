"""Agreement from events: the join, who outranks whom, duplicates, windows."""

from __future__ import annotations

from typing import Any

import pytest

from rollout.agreement import agreement


def _evaluation(rid: str, score: float, at: float, version: str = "j@1") -> dict[str, Any]:
    body = {"response_id": rid, "evaluator": "judge", "version": version, "score": score}
    return {"type": "evaluation", "time": at, "body": body}


def _feedback(rid: str, kind: str, value: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "feedback", "body": {"response_id": rid, "kind": kind, "value": value, **extra}}


def test_auc_and_spearman_per_version_with_labels_resolved() -> None:
    evaluations = [
        _evaluation("a", 5, 0), _evaluation("b", 4, 0), _evaluation("c", 2, 0),
        _evaluation("d", 1, 0), _evaluation("a", 5, 1),  # a duplicate delivery
        _evaluation("a", 1, 0, version="j@2"),
    ]  # fmt: skip
    feedback = [
        _feedback("a", "thumbs_up"),
        _feedback("b", "thumbs_down"),
        _feedback("b", "thumbs_up"),  # the user changed their mind: the last counts
        _feedback("c", "thumbs_down", source="reviewer"),
        _feedback("c", "thumbs_up"),  # a user after a reviewer: the reviewer's stands
        _feedback("d", "thumbs_down"),
        _feedback("a", "rating", 5), _feedback("c", "rating", 2), _feedback("d", "rating", 1),
    ]  # fmt: skip
    v1, v2 = agreement(evaluations, feedback)
    assert (v1.version, v1.scored, v1.thumbs_up, v1.thumbs_down, v1.rated) == ("j@1", 4, 2, 2, 3)
    assert v1.auc == 1.0  # liked a (5), b (4) above disliked c (2), d (1)
    assert v1.spearman == pytest.approx(1.0)
    assert (v2.version, v2.scored, v2.thumbs_up, v2.thumbs_down) == ("j@2", 1, 1, 0)
    assert v2.auc is None


def test_windows_show_drift() -> None:
    early = [_evaluation(f"e{i}", 5 if i % 2 else 1, 10.0 + i) for i in range(10)]
    late = [_evaluation(f"l{i}", 1 if i % 2 else 5, 3610.0 + i) for i in range(10)]
    feedback = [_feedback(f"{p}{i}", "thumbs_up" if i % 2 else "thumbs_down")
                for p in "el" for i in range(10)]  # fmt: skip
    first, second = agreement([*early, *late], feedback, window_s=3600)
    assert (first.window_start, first.auc) == (0.0, 1.0)
    assert (second.window_start, second.auc) == (3600.0, 0.0)


def test_iso_times_from_the_spool() -> None:
    event = _evaluation("a", 3, 0)
    event["time"] = "2026-12-02T18:00:00Z"
    (only,) = agreement([event], [], window_s=60)
    assert only.window_start == 1796234400.0
