"""Join completions with all feedback on them by response id (pure, order-independent)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from feedback.schema import AuditEvent, CompletionEvent, Event, FeedbackEvent, to_json


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """Time windows of the join, in seconds."""

    # Replica clocks differ: feedback may be dated this much before its completion.
    skew_s: float = 300.0
    # Feedback dated later than this after its completion is late (the gateway's ids.max_age_s).
    max_feedback_age_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Answer:
    """One completion and every piece of feedback on it, oldest first."""

    completion: CompletionEvent
    feedback: tuple[FeedbackEvent, ...]


@dataclass
class JoinStats:
    """What the join saw and what it set aside, by reason."""

    lines: int = 0
    unreadable: int = 0
    completions: int = 0
    feedback: int = 0
    other: int = 0
    duplicate_events: int = 0
    duplicate_completions: int = 0
    duplicate_idempotency: int = 0
    orphan_feedback: int = 0
    early_feedback: int = 0
    late_feedback: int = 0
    # Completions nobody judged (no feedback, not named by a preference): kept only as the
    # next answer of a regeneration thread (rules.Unjudged).
    unjudged: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counters by name, for the manifest."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Joined:
    """Answers sorted by (time, response id), and the join's counters."""

    answers: tuple[Answer, ...]
    stats: JoinStats = field(default_factory=JoinStats)


def event_of(data: dict[str, Any]) -> Event:
    """Validate one event already parsed from JSON."""
    kind = data.get("type")
    if kind == "completion":
        return CompletionEvent.model_validate(data)
    if kind == "feedback":
        return FeedbackEvent.model_validate(data)
    return AuditEvent.model_validate(data)


def parse_lines(lines: Iterable[bytes], stats: JoinStats) -> Iterator[Event]:
    """Events from JSON lines; unreadable lines (a torn spool tail, junk) are counted, skipped.

    The one place where a build reads events: every source goes through here.
    """
    for line in lines:
        if not line.strip():
            continue
        stats.lines += 1
        try:
            data = orjson.loads(line)
            if not isinstance(data, dict):
                raise ValueError("an event is a JSON object")
            yield event_of(data)
        except (ValueError, ValidationError):
            stats.unreadable += 1


def referenced_ids(feedback: Iterable[FeedbackEvent]) -> set[str]:
    """Response ids that preferences name as their answer B."""
    return {f.body.other_response_id for f in feedback if f.body.other_response_id}


def _order(event: CompletionEvent | FeedbackEvent) -> tuple[object, ...]:
    return (event.time, str(event.event_id))


def join(events: Iterable[Event], config: JoinConfig, stats: JoinStats | None = None) -> Joined:
    """Dedupe by event_id and join; the result does not depend on the order of `events`."""
    stats = stats if stats is not None else JoinStats()
    seen: dict[str, CompletionEvent | FeedbackEvent] = {}
    for event in events:
        if not isinstance(event, CompletionEvent | FeedbackEvent):
            stats.other += 1
            continue
        key = str(event.event_id)
        kept = seen.get(key)
        if kept is None:
            seen[key] = event
            continue
        stats.duplicate_events += 1
        # At-least-once delivery repeats the same bytes; should they ever differ, the
        # smaller serialisation wins so the result stays independent of arrival order.
        if to_json(event) < to_json(kept):
            seen[key] = event

    completions: dict[str, CompletionEvent] = {}
    feedback: dict[str, list[FeedbackEvent]] = {}
    for event in sorted(seen.values(), key=_order):
        if isinstance(event, CompletionEvent):
            stats.completions += 1
            rid = event.body.response_id
            if rid in completions:
                stats.duplicate_completions += 1  # re-emitted under a new event_id
            else:
                completions[rid] = event
        else:
            stats.feedback += 1
            feedback.setdefault(event.body.response_id, []).append(event)

    skew = timedelta(seconds=config.skew_s)
    max_age = timedelta(seconds=config.max_feedback_age_s)
    answers: list[Answer] = []
    for rid, items in feedback.items():
        if rid not in completions:
            # Its completion may still be on its way (or in an earlier, compacted log).
            stats.orphan_feedback += len(items)
    for rid, completion in completions.items():
        kept_feedback: list[FeedbackEvent] = []
        keys: set[str] = set()
        for item in feedback.get(rid, ()):
            if item.time < completion.time - skew:
                stats.early_feedback += 1
                continue
            if item.time > completion.time + max_age:
                stats.late_feedback += 1
                continue
            idem = item.body.idempotency_key
            if idem is not None:
                if idem in keys:
                    stats.duplicate_idempotency += 1  # a client retry under a new event_id
                    continue
                keys.add(idem)
            kept_feedback.append(item)
        answers.append(Answer(completion, tuple(kept_feedback)))
    answers.sort(key=lambda answer: (answer.completion.time, answer.completion.body.response_id))
    return Joined(tuple(answers), stats)
