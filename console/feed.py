"""What the console sees of the event stream: recent events, review items and answer pairs.

The gateway's event pipeline hands each record to `Feed.listen` after redaction, so
everything here is already redacted. `listen` only appends to a bounded buffer (it runs in
the pipeline); `Feed.drain`, a background task, parses the records, keeps recent events
for the events page, selects review items into the queues and pairs answers to the same
prompt from two variants for side-by-side review.
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
from feedback.sinks.base import Record

log = logging.getLogger(__name__)

_BACKLOG = 10_000  # records waiting for the drain task; more are dropped (counted)


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


@dataclass(frozen=True, slots=True)
class Pair:
    """Two variants' answers to the same prompt under one flag."""

    pair_id: str
    flag: str
    first: Answer
    second: Answer


def record_is_audit(event: dict[str, Any]) -> bool:
    """An audit event (flag_change and other changes): it has who/what, not a response id."""
    body = event.get("body") or {}
    return "who" in body and "what" in body


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
    )


def signals_of(event: dict[str, Any], queue: QueueConfig, rng: random.Random) -> list[str]:
    """Why this event selects its answer into `queue` (empty: it does not)."""
    body = event.get("body") or {}
    kind = event.get("type")
    found: list[str] = []
    if kind == "completion":
        if "safety" in queue.signals and body.get("safety"):
            cats = ", ".join(sorted(body["safety"]))
            found.append(f"safety findings: {cats}")
        if "audit_sample" in queue.signals and rng.random() < queue.sample_rate:
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
        self.recent: deque[dict[str, Any]] = deque(maxlen=config.recent_events)
        self.audit: deque[dict[str, Any]] = deque(maxlen=config.recent_events)
        self.answers: OrderedDict[str, Answer] = OrderedDict()
        self.pairs: OrderedDict[str, Pair] = OrderedDict()
        self._by_prompt: OrderedDict[str, dict[str, Answer]] = OrderedDict()
        self._backlog: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._rng = random.Random(config.sample_seed)
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
                event = orjson.loads(record.value)
                await self.take(event)
            except Exception:
                log.exception("console: cannot use a %s record", record.topic)

    async def take(self, event: dict[str, Any]) -> None:
        """One parsed event: keep it, pair it, select it."""
        if event.get("type") in ("completion", "feedback"):
            self.recent.append(event)
        elif record_is_audit(event):
            self.audit.append(event)
            return
        answer: Answer | None = None
        if event.get("type") == "completion":
            answer = answer_of(event)
            if (event.get("body") or {}).get("status", "ok") == "ok":
                self._remember(answer)
        else:
            rid = str((event.get("body") or {}).get("response_id", ""))
            answer = self.answers.get(rid)
        for queue in self.config.queues:
            found = signals_of(event, queue, self._rng)
            if found:
                await self._select(queue, event, answer, found)

    def _remember(self, answer: Answer) -> None:
        self.answers[answer.response_id] = answer
        while len(self.answers) > self.config.recent_events:
            self.answers.popitem(last=False)
        if not answer.flag or not answer.variant or not answer.prompt:
            return
        digest = hashlib.sha256(f"{answer.flag}\0{answer.prompt}".encode()).hexdigest()[:16]
        seen = self._by_prompt.setdefault(digest, {})
        self._by_prompt.move_to_end(digest)
        for variant, other in seen.items():
            if variant != answer.variant:
                pair_id = f"{digest}:{other.response_id[-12:]}:{answer.response_id[-12:]}"
                self.pairs[pair_id] = Pair(pair_id, answer.flag, other, answer)
                while len(self.pairs) > self.config.max_pairs:
                    self.pairs.popitem(last=False)
        seen[answer.variant] = answer
        while len(self._by_prompt) > self.config.recent_events:
            self._by_prompt.popitem(last=False)

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
        """Newest first, filtered."""
        shown = 0
        for event in reversed(self.recent):
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
