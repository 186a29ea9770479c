"""What the console sees of the event stream: recent events, review items and answer pairs.

The gateway's event pipeline hands each record to `Feed.listen` after redaction, so
everything here is already redacted. `listen` only appends to a bounded buffer (it runs in
the pipeline); `Feed.drain`, a background task, keeps the recent records as they are and
parses only what selects review items (feedback, sampled or flagged completions): parsing
every completion cost ~14 us an event on the gateway's loop. The events page and the
side-by-side pairs parse the recent records when someone looks.

Pairs are of two kinds: a shadow pair (a completion with `role: shadow` and `pair_of`, the
primary's response id, next to that primary: one request, two variants) and, failing those,
two variants' answers to the same prompt. Reviewers get shadow pairs first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from console.config import ConsoleConfig, QueueConfig
from console.queues import QueueStore
from feedback.schema import AUDIT_TOPIC, COMPLETIONS_TOPIC
from feedback.sinks.base import Record

log = logging.getLogger(__name__)

_BACKLOG = 10_000  # records waiting for the drain task; more are dropped (counted)
_SHADOW = b'"role":"shadow"'  # as orjson writes it: a cheap test before parsing


@dataclass(frozen=True, slots=True)
class Answer:
    """One completion as the console shows it: ids, flag and variant, prompt and answer."""

    response_id: str
    flag: str | None
    variant: str | None
    prompt: str
    answer: str
    time: str
    safety: dict[str, int]
    app: str | None = None


@dataclass(frozen=True, slots=True)
class Pair:
    """Two variants' answers to the same prompt under one flag (first: the primary)."""

    pair_id: str
    flag: str
    first: Answer
    second: Answer
    shadow: bool = False  # a shadow pair: `second` answered the very request `first` did


def prompt_text(request: dict[str, Any] | None) -> str:
    """The prompt as text: chat messages as `role: content` lines, or the completion prompt."""
    if not request:
        return ""
    messages = request.get("messages")
    if messages:
        lines = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            lines.append(f"{m.get('role', '?')}: {content or ''}")
        return "\n".join(lines)
    prompt = request.get("prompt")
    if isinstance(prompt, list):
        return "\n".join(str(p) for p in prompt)
    return str(prompt or "")


def answer_of(event: dict[str, Any]) -> Answer:
    """The Answer in a completion event."""
    body = event.get("body") or {}
    response = body.get("response") or {}
    return Answer(
        response_id=str(body.get("response_id", "")),
        flag=body.get("flag"),
        variant=body.get("variant"),
        prompt=prompt_text(body.get("request")),
        answer=str(response.get("text") or ""),
        time=str(event.get("time", "")),
        safety=dict(body.get("safety") or {}),
        app=body.get("app"),
    )


def signals_of(event: dict[str, Any], queue: QueueConfig, sampled: bool = False) -> list[str]:
    """Why this event selects its answer into `queue` (empty: it does not).

    `sampled`: this completion was drawn for the queue's audit sample.
    """
    body = event.get("body") or {}
    kind = event.get("type")
    found: list[str] = []
    if kind == "completion":
        if "safety" in queue.signals and body.get("safety"):
            cats = ", ".join(sorted(body["safety"]))
            found.append(f"safety findings: {cats}")
        if "audit_sample" in queue.signals and sampled:
            found.append(f"audit sample ({queue.sample_rate:.0%} of {body.get('variant')})")
    elif kind == "feedback" and body.get("source", "user") == "user":
        fb = body.get("kind")
        if "report" in queue.signals and fb == "report":
            found.append(f"reported: {body.get('category') or 'no category'}")
        if (
            "thumbs_down_edit" in queue.signals
            and fb in ("thumbs_down", "edit")
            and body.get("edited_text")
        ):
            found.append(f"{fb} with an edit")
    elif kind == "evaluation" and "low_score" in queue.signals:
        # Evaluator scores (issue 17) arrive as `evaluation` events: the hook is ready.
        score = body.get("score")
        if isinstance(score, int | float) and score < queue.score_below:
            found.append(f"low score {score:.2f} from {body.get('evaluator', '?')}")
    return found


class Feed:
    """Recent events, review selection and answer pairs, all bounded."""

    def __init__(self, config: ConsoleConfig, queues: QueueStore) -> None:
        self.config = config
        self.queues = queues
        # Completions and feedback as they came (raw JSON); answers by response id.
        self.recent: deque[Record] = deque(maxlen=config.recent_events)
        self.answers: OrderedDict[str, bytes] = OrderedDict()
        self.audit: deque[dict[str, Any]] = deque(maxlen=config.recent_events)
        self._backlog: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._rng = random.Random(config.sample_seed)
        self._seen = 0  # records taken so far: the pairs cache key
        self._pairs: tuple[int, OrderedDict[str, Pair]] = (-1, OrderedDict())
        self._sampling = [q for q in config.queues if "audit_sample" in q.signals]
        self._safety = any("safety" in q.signals for q in config.queues)
        self.dropped = 0
        self.selected = 0

    def listen(self, record: Record) -> None:
        """Take a redacted record from the pipeline; never blocks."""
        if len(self._backlog) >= _BACKLOG:
            self.dropped += 1
            return
        self._backlog.append(record)
        self._wake.set()

    async def run(self) -> None:
        """Process records as they come (the background task)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.drain()

    async def drain(self) -> None:
        """Process every record waiting now."""
        while self._backlog:
            record = self._backlog.popleft()
            try:
                await self.take_record(record)
            except Exception:
                log.exception("console: cannot use a %s record", record.topic)

    async def take_record(self, record: Record) -> None:
        """Keep a record; parse it only when it may select a review item."""
        self._seen += 1
        if record.topic == AUDIT_TOPIC:
            self.audit.append(orjson.loads(record.value))
            return
        self.recent.append(record)
        if record.topic == COMPLETIONS_TOPIC:
            # A shadow's record may be keyed by its primary's id (one partition for the pair):
            # it never takes the primary's place here, where feedback looks answers up.
            if record.key not in self.answers or _SHADOW not in record.value:
                self.answers[record.key] = record.value
            while len(self.answers) > self.config.recent_events:
                self.answers.popitem(last=False)
            # Cheap tests first: only a sampled or flagged completion is parsed.
            sampled = frozenset(
                q.name for q in self._sampling if self._rng.random() < q.sample_rate
            )
            flagged = self._safety and b'"safety":{}' not in record.value
            if not (flagged or sampled):
                return
            await self.take(orjson.loads(record.value), sampled)
            return
        await self.take(orjson.loads(record.value))

    async def take(self, event: dict[str, Any], sampled: frozenset[str] = frozenset()) -> None:
        """One parsed completion, feedback or evaluation event: select it into queues."""
        answer: Answer | None = None
        if event.get("type") == "completion":
            answer = answer_of(event)
        else:
            rid = str((event.get("body") or {}).get("response_id", ""))
            raw = self.answers.get(rid)
            answer = answer_of(orjson.loads(raw)) if raw is not None else None
        for queue in self.config.queues:
            found = signals_of(event, queue, queue.name in sampled)
            if found:
                await self._select(queue, event, answer, found)

    @property
    def pairs(self) -> OrderedDict[str, Pair]:
        """Shadow pairs, then two variants' answers to one prompt, newest last (cached)."""
        if self._pairs[0] == self._seen:
            return self._pairs[1]
        same: OrderedDict[str, Pair] = OrderedDict()
        by_prompt: dict[str, dict[str, Answer]] = {}
        primaries: dict[str, Answer] = {}
        shadows: list[tuple[str, Answer]] = []
        for record in self.recent:
            if record.topic != COMPLETIONS_TOPIC:
                continue
            event = orjson.loads(record.value)
            body = event.get("body") or {}
            if body.get("status", "ok") != "ok":
                continue
            answer = answer_of(event)
            if not answer.flag or not answer.variant or not answer.prompt:
                continue
            if body.get("role") == "shadow":
                if body.get("pair_of"):
                    shadows.append((str(body["pair_of"]), answer))
                continue  # a shadow pairs with its own primary only
            primaries[answer.response_id] = answer
            # One app's answers only: the gateway takes a preference on two answers to one app.
            key = f"{answer.flag}\0{answer.app}\0{answer.prompt}"
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            seen = by_prompt.setdefault(digest, {})
            for variant, other in seen.items():
                if variant != answer.variant:
                    pair_id = f"{digest}:{other.response_id[-12:]}:{answer.response_id[-12:]}"
                    same[pair_id] = Pair(pair_id, answer.flag, other, answer)
            seen[answer.variant] = answer
        shadow: OrderedDict[str, Pair] = OrderedDict()
        for primary_id, answer in shadows:
            primary = primaries.get(primary_id)
            if primary is None or primary.variant == answer.variant:
                continue  # the primary left the recent window (or is not one to compare)
            pair_id = f"shadow:{primary_id[-16:]}:{answer.response_id[-16:]}"
            shadow[pair_id] = Pair(pair_id, primary.flag or "", primary, answer, shadow=True)
        while len(same) + len(shadow) > self.config.max_pairs:
            (same or shadow).popitem(last=False)
        pairs = OrderedDict(list(same.items()) + list(shadow.items()))
        self._pairs = (self._seen, pairs)
        return pairs

    async def _select(
        self, queue: QueueConfig, event: dict[str, Any], answer: Answer | None, found: list[str]
    ) -> None:
        body = event.get("body") or {}
        rid = str(body.get("response_id", ""))
        item: dict[str, Any] = {
            "item_id": f"{queue.name}:{rid}:{str(event.get('event_id', ''))[-12:]}",
            "queue": queue.name,
            "response_id": rid,
            "flag": body.get("flag"),
            "variant": body.get("variant"),
            "prompt": answer.prompt if answer else None,
            "answer": answer.answer if answer else None,
            "signals": found,
            "time": event.get("time"),
        }
        if event.get("type") == "feedback":
            item["user_feedback"] = {
                k: body.get(k) for k in ("kind", "category", "comment", "edited_text", "value")
            }
        await self.queues.add(queue.name, item, queue.overlap)
        self.selected += 1

    def audit_for(self, flag: str) -> list[dict[str, Any]]:
        """Changes to one flag this process saw, newest first."""
        return [e for e in reversed(self.audit) if (e.get("body") or {}).get("what") == flag]

    def events(
        self, flag: str | None, variant: str | None, kind: str | None, limit: int
    ) -> Iterator[dict[str, Any]]:
        """Newest first, filtered (parsed as they are shown)."""
        shown = 0
        for record in reversed(self.recent):
            event = orjson.loads(record.value)
            body = event.get("body") or {}
            if flag and body.get("flag") != flag:
                continue
            if variant and body.get("variant") != variant:
                continue
            if kind and event.get("type") != kind:
                continue
            yield event
            shown += 1
            if shown >= limit:
                return
