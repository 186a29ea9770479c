"""Pairing and labelling rules: joined answers -> DPO pairs, KTO labels, SFT rows (pure).

Conflicts are settled per answer, the same way everywhere:
- the answer's *verdict* is its latest polar signal (thumbs, accept/reject, a rating outside
  the neutral band) by event time, ties broken by event_id: people change their minds and
  UIs toggle votes, so the last word counts;
- the latest `edit` by time is the correction (earlier drafts are superseded);
- a `report` bars the answer from every positive use (chosen, SFT, a KTO `True`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from feedback.datasets.join import Answer
from feedback.schema import CompletionEvent, FeedbackEvent, FeedbackKind

Kind = Literal["dpo", "kto", "sft"]
KINDS: tuple[Kind, ...] = ("dpo", "kto", "sft")
Message = dict[str, str]
POLAR_KINDS: frozenset[str] = frozenset({"thumbs_up", "thumbs_down", "accept", "reject", "rating"})
# Redaction categories whose placeholders still mark text we will not train on.
DEFAULT_UNSAFE: frozenset[str] = frozenset(
    {"secret", "api_key", "token", "card", "national_id", "iban"}
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filters(_Frozen):
    """Which answers and which feedback a build takes; None means no restriction."""

    since: AwareDatetime | None = None  # completion time, inclusive
    until: AwareDatetime | None = None  # completion time, exclusive
    flags: frozenset[str] | None = None
    variants: frozenset[str] | None = None
    apps: frozenset[str] | None = None
    kinds: frozenset[FeedbackKind] | None = None  # feedback kinds considered at all

    def admits(self, completion: CompletionEvent) -> bool:
        """True when the completion is inside the time range, flags, variants and apps."""
        body = completion.body
        return (
            (self.since is None or completion.time >= self.since)
            and (self.until is None or completion.time < self.until)
            and (self.flags is None or body.flag in self.flags)
            and (self.variants is None or body.variant in self.variants)
            and (self.apps is None or body.app in self.apps)
        )


class RuleConfig(_Frozen):
    """Thresholds and switches of the rules (recorded in the manifest)."""

    rating_positive_min: float = 4.0  # a rating at or above is a positive signal
    rating_negative_max: float = 2.0  # at or below is negative; between is neutral
    kto_kinds: frozenset[FeedbackKind] = frozenset(
        {"thumbs_up", "thumbs_down", "accept", "reject", "rating"}
    )
    sft_kinds: frozenset[FeedbackKind] = frozenset({"accept"})  # positive verdicts taken as SFT
    sft_edits: bool = True
    regenerate_window_s: float = Field(3600.0, gt=0)
    unsafe_categories: frozenset[str] = DEFAULT_UNSAFE


@dataclass(frozen=True, slots=True)
class Example:
    """One dataset row: its kind, the rule that made it, the TRL columns and provenance."""

    kind: Kind
    rule: str
    columns: dict[str, Any]  # prompt/chosen/rejected, prompt/completion/label or messages
    flag: str | None
    variant: str | None
    app: str
    time: datetime
    units: tuple[str, ...]
    response_ids: tuple[str, ...]
    rejected_variant: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The deciding signal on an answer: +1 or -1, and the feedback kind that gave it."""

    polarity: int
    kind: str


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Text parts only: images and audio are redacted to placeholders upstream anyway.
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        return "\n".join(parts)
    return str(content)


def prompt_messages(completion: CompletionEvent) -> list[Message] | None:
    """The request as TRL conversational messages (role, text content); None without content."""
    request = completion.body.request
    if request is None:
        return None
    if request.messages:
        return [
            {
                "role": str(message.get("role", "user")),
                "content": _content_text(message.get("content")),
            }
            for message in request.messages
        ]
    prompt = request.prompt
    if isinstance(prompt, list):
        prompt = prompt[0] if len(prompt) == 1 else None
    if prompt:
        # Legacy completions: one user turn, so every row of a file has the same shape.
        return [{"role": "user", "content": prompt}]
    return None


def answer_text(completion: CompletionEvent) -> str | None:
    """The answer's text, or None when it has none (consent none, tool calls only, errors)."""
    response = completion.body.response
    if response is None or not response.text or not response.text.strip():
        return None
    return response.text


def prompt_key(messages: Sequence[Message]) -> str:
    """Canonical hash of a conversation prefix: same messages, same key."""
    return hashlib.sha256(orjson.dumps(list(messages), option=orjson.OPT_SORT_KEYS)).hexdigest()


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def _order(event: FeedbackEvent) -> tuple[object, ...]:
    return (event.time, str(event.event_id))


def signal(feedback: FeedbackEvent, config: RuleConfig) -> int:
    """+1, -1 or 0 for one piece of feedback."""
    kind, value = feedback.body.kind, feedback.body.value
    if kind in ("thumbs_up", "accept"):
        return 1
    if kind in ("thumbs_down", "reject"):
        return -1
    if kind == "rating" and value is not None:
        if value >= config.rating_positive_min:
            return 1
        if value <= config.rating_negative_max:
            return -1
    return 0


def verdict(feedback: Iterable[FeedbackEvent], config: RuleConfig) -> Verdict | None:
    """The latest polar signal (time, then event_id), or None when there is none."""
    latest: FeedbackEvent | None = None
    for item in feedback:
        polar = item.body.kind in POLAR_KINDS and signal(item, config) != 0
        if polar and (latest is None or _order(item) > _order(latest)):
            latest = item
    if latest is None:
        return None
    return Verdict(signal(latest, config), latest.body.kind)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An answer usable for training: its prompt, text and settled feedback."""

    answer: Answer
    prompt: list[Message]
    key: str
    text: str
    feedback: tuple[FeedbackEvent, ...]  # what the kind filter let through, oldest first
    verdict: Verdict | None
    reported: bool
    edited: str | None  # the latest edit's text, when usable

    @property
    def completion(self) -> CompletionEvent:
        """The completion event."""
        return self.answer.completion

    @property
    def positive(self) -> bool:
        """A positive verdict and no report."""
        return self.verdict is not None and self.verdict.polarity > 0 and not self.reported

    @property
    def negative(self) -> bool:
        """A negative verdict."""
        return self.verdict is not None and self.verdict.polarity < 0


def candidates(
    answers: Iterable[Answer], filters: Filters, config: RuleConfig, dropped: Counter[str]
) -> list[Candidate]:
    """Answers that pass the filters and the safety and consent checks, settled."""
    out: list[Candidate] = []
    for answer in answers:
        completion = answer.completion
        body = completion.body
        if not filters.admits(completion):
            dropped["filtered"] += 1
            continue
        if body.status != "ok":
            dropped["not_ok"] += 1
            continue
        if body.consent == "none":
            dropped["consent_none"] += 1
            continue
        if config.unsafe_categories & {c for c, n in body.safety.items() if n > 0}:
            dropped["unsafe_completion"] += 1
            continue
        prompt, text = prompt_messages(completion), answer_text(completion)
        if prompt is None or text is None:
            dropped["no_content"] += 1
            continue
        feedback = tuple(
            item
            for item in answer.feedback
            if filters.kinds is None or item.body.kind in filters.kinds
        )
        edits = [item for item in feedback if item.body.kind == "edit"]
        out.append(
            Candidate(
                answer=answer,
                prompt=prompt,
                key=prompt_key(prompt),
                text=text,
                feedback=feedback,
                verdict=verdict(feedback, config),
                reported=any(item.body.kind == "report" for item in feedback),
                edited=_edited_text(max(edits, key=_order), text, config, dropped)
                if edits
                else None,
            )
        )
    return out


def _example(
    kind: Kind,
    rule: str,
    columns: dict[str, Any],
    main: Candidate,
    other: Candidate | None = None,
) -> Example:
    body = main.completion.body
    units = [body.unit_hash]
    rids = [body.response_id]
    if other is not None:
        rids.append(other.completion.body.response_id)
        if other.completion.body.unit_hash not in units:
            units.append(other.completion.body.unit_hash)
    return Example(
        kind=kind,
        rule=rule,
        columns=columns,
        flag=body.flag,
        variant=body.variant,
        app=body.app,
        time=main.completion.time,
        units=tuple(units),
        response_ids=tuple(rids),
        rejected_variant=None if other is None else other.completion.body.variant,
    )


def _edited_text(
    edit: FeedbackEvent, original: str, config: RuleConfig, dropped: Counter[str]
) -> str | None:
    text = edit.body.edited_text
    if edit.body.consent == "none" or not text or not text.strip():
        dropped["edit_without_text"] += 1
        return None
    if config.unsafe_categories & {c for c, n in edit.body.safety.items() if n > 0}:
        dropped["unsafe_edit"] += 1
        return None
    if text.strip() == original.strip():
        dropped["edit_unchanged"] += 1
        return None
    return text


def _pair(prompt: list[Message], chosen: str, rejected: str) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}


def edit_rows(pool: Sequence[Candidate], config: RuleConfig) -> list[Example]:
    """`edit`: a DPO pair (edited over original) and, when enabled, an SFT row of the edit."""
    out: list[Example] = []
    for candidate in pool:
        edited = candidate.edited
        if edited is None:
            continue
        out.append(
            _example("dpo", "edit", _pair(candidate.prompt, edited, candidate.text), candidate)
        )
        if config.sft_edits:
            messages = [*candidate.prompt, *_assistant(edited)]
            out.append(_example("sft", "edit", {"messages": messages}, candidate))
    return out


def regenerate_rows(
    pool: Sequence[Candidate], config: RuleConfig, dropped: Counter[str]
) -> list[Example]:
    """`regenerate`: the next answer to the same prompt from the same unit, once liked, wins."""
    by_thread: dict[tuple[str, str, str], list[Candidate]] = {}
    for candidate in pool:
        body = candidate.completion.body
        by_thread.setdefault((body.app, body.unit_hash, candidate.key), []).append(candidate)
    out: list[Example] = []
    for old in pool:
        asks = [i for i in old.feedback if i.body.kind == "regenerate"]
        if not asks:
            continue
        ask = min(asks, key=_order)
        body = old.completion.body
        limit = ask.time.timestamp() + config.regenerate_window_s
        later = [
            c
            for c in by_thread[(body.app, body.unit_hash, old.key)]
            if c is not old
            and (c.completion.time, c.completion.body.response_id)
            > (old.completion.time, body.response_id)
            and c.completion.time.timestamp() <= limit
        ]
        if not later:
            dropped["regenerate_unmatched"] += 1
            continue
        new = later[0]  # pool is in time order: the first answer after the old one
        if not new.positive:
            dropped["regenerate_not_liked"] += 1
            continue
        if old.positive:
            dropped["regenerate_conflict"] += 1  # both liked: no preference to learn
            continue
        if new.text.strip() == old.text.strip():
            dropped["regenerate_same_text"] += 1
            continue
        out.append(_example("dpo", "regenerate", _pair(old.prompt, new.text, old.text), new, old))
    return out


def variant_rows(pool: Sequence[Candidate]) -> list[Example]:
    """`variants`: a liked and a disliked answer to one prompt of one flag, from two variants."""
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for candidate in pool:
        body = candidate.completion.body
        if body.flag is not None and body.variant is not None:
            groups.setdefault((body.flag, candidate.key), []).append(candidate)
    out: list[Example] = []
    for group in groups.values():
        negatives = [c for c in group if c.negative]
        used: set[str] = set()
        for good in (c for c in group if c.positive):
            for bad in negatives:
                rid = bad.completion.body.response_id
                if (
                    rid in used
                    or bad.completion.body.variant == good.completion.body.variant
                    or bad.text.strip() == good.text.strip()
                ):
                    continue
                used.add(rid)  # each disliked answer pairs once: pairs stay bounded
                out.append(
                    _example("dpo", "variants", _pair(good.prompt, good.text, bad.text), good, bad)
                )
                break
    return out


def kto_rows(pool: Sequence[Candidate], config: RuleConfig) -> list[Example]:
    """KTO: every answer whose verdict came from a configured kind, labelled by its polarity."""
    out: list[Example] = []
    for candidate in pool:
        settled = candidate.verdict
        if settled is None or settled.kind not in config.kto_kinds:
            continue
        if settled.polarity > 0 and candidate.reported:
            continue
        columns = {
            "prompt": candidate.prompt,
            "completion": _assistant(candidate.text),
            "label": settled.polarity > 0,
        }
        out.append(_example("kto", settled.kind, columns, candidate))
    return out


def sft_rows(pool: Sequence[Candidate], config: RuleConfig) -> list[Example]:
    """SFT from accepted answers (edited ones come from edit_rows, with the edit)."""
    out: list[Example] = []
    for candidate in pool:
        settled = candidate.verdict
        if candidate.edited is not None and config.sft_edits:
            continue
        if settled is None or not candidate.positive or settled.kind not in config.sft_kinds:
            continue
        messages = [*candidate.prompt, *_assistant(candidate.text)]
        out.append(_example("sft", settled.kind, {"messages": messages}, candidate))
    return out


def apply_rules(
    answers: Iterable[Answer], filters: Filters, config: RuleConfig, dropped: Counter[str]
) -> list[Example]:
    """Every rule over the answers, in a fixed order."""
    pool = candidates(answers, filters, config, dropped)
    return [
        *edit_rows(pool, config),
        *regenerate_rows(pool, config, dropped),
        *variant_rows(pool),
        *kto_rows(pool, config),
        *sft_rows(pool, config),
    ]
