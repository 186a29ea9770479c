"""Agreement of each evaluator version with people, from events (pure): AUC, Spearman, by window.

Evaluations and feedback are joined on the response id. Per answer, a reviewer's label
outranks a user's (DESIGN.md) and among equals the last one counts; a duplicated evaluation
(delivery is at least once) counts once. With `window_s`, agreement is reported per window
of evaluation time, so a judge that drifts away from people shows as a falling AUC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from rollout.calibration import auc, spearman


class Agreement(BaseModel):
    """How one evaluator version's scores agree with human labels in one window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    evaluator: str
    version: str
    window_start: float | None  # unix seconds; None: all time
    scored: int
    thumbs_up: int
    thumbs_down: int
    rated: int
    auc: float | None
    spearman: float | None


def _time(event: Mapping[str, Any]) -> float:
    value = event.get("time")
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def _labels(feedback: Iterable[Mapping[str, Any]]) -> tuple[dict[str, bool], dict[str, float]]:
    """Per response id: the thumb that counts, and the rating that counts."""
    thumbs: dict[str, tuple[int, bool]] = {}
    ratings: dict[str, tuple[int, float]] = {}
    for event in feedback:
        body = event.get("body") or {}
        rid, kind = body.get("response_id"), body.get("kind")
        rank = 1 if body.get("source") == "reviewer" else 0
        if not isinstance(rid, str):
            continue
        if kind in ("thumbs_up", "thumbs_down") and rank >= thumbs.get(rid, (0, False))[0]:
            thumbs[rid] = (rank, kind == "thumbs_up")
        value = body.get("value")
        if (
            kind == "rating"
            and isinstance(value, int | float)
            and rank >= ratings.get(rid, (0, 0.0))[0]
        ):
            ratings[rid] = (rank, float(value))
    return {k: v for k, (_, v) in thumbs.items()}, {k: v for k, (_, v) in ratings.items()}


def agreement(
    evaluations: Iterable[Mapping[str, Any]],
    feedback: Iterable[Mapping[str, Any]],
    window_s: float | None = None,
) -> list[Agreement]:
    """Agreement per (evaluator, version, window), sorted by those keys."""
    thumbs, ratings = _labels(feedback)
    scores: dict[tuple[str, str, float | None], dict[str, float]] = {}
    for event in evaluations:
        body = event.get("body") or {}
        start = None
        if window_s is not None:
            start = _time(event) // window_s * window_s
        key = (str(body.get("evaluator")), str(body.get("version")), start)
        scores.setdefault(key, {})[str(body.get("response_id"))] = float(body["score"])
    out = []
    for (evaluator, version, start), by_id in sorted(
        scores.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0.0)
    ):
        up = [s for rid, s in by_id.items() if thumbs.get(rid) is True]
        down = [s for rid, s in by_id.items() if thumbs.get(rid) is False]
        rated = [rid for rid in by_id if rid in ratings]
        rho = spearman([by_id[r] for r in rated], [ratings[r] for r in rated]) if rated else None
        out.append(
            Agreement(
                evaluator=evaluator,
                version=version,
                window_start=start,
                scored=len(by_id),
                thumbs_up=len(up),
                thumbs_down=len(down),
                rated=len(rated),
                auc=auc(up, down),
                spearman=rho,
            )
        )
    return out
