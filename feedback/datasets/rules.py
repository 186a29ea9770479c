"""Pairing and labelling rules: joined answers -> DPO pairs, KTO labels, SFT rows (pure).

Conflicts are settled the same way everywhere:
- every polar signal (thumbs, accept/reject, a rating outside the neutral band) is a vote of
  its voter (the unit that got the answer, or a reviewer); a voter's latest vote counts:
  people change their minds and UIs toggle votes;
- an answer's *verdict* folds its votes (votes.py: reviewers first); KTO labels and
  `variants` pairs fold the votes of every answer with the same prompt and text, so popular
  prompts that users disagree on give a majority label instead of nothing;
- the latest `edit` by time is the correction (a reviewer's before a user's);
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
from feedback.datasets.votes import Tally, Vote, VoteConfig, decide, tally
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
    votes: VoteConfig = VoteConfig()


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
    # Votes for (+1) and against (-1) what the row says; build.py folds them across rows.
    votes: tuple[Vote, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The settled judgement of an answer: +1 or -1, the deciding kind and source, the votes."""

    polarity: int
    kind: str
    source: str = "user"
    votes: tuple[Vote, ...] = ()


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


def voter(feedback: FeedbackEvent, unit_hash: str) -> str:
    """Who cast a judgement: the unit that got the answer, or a named reviewer or judge."""
    body = feedback.body
    if body.source == "user":
        return f"user:{unit_hash}"
    return f"{body.source}:{body.reviewer or body.unit_hash or '-'}"


def vote_of(feedback: FeedbackEvent, unit_hash: str, polarity: int) -> Vote:
    """A piece of feedback as a vote of `polarity` on what it is about."""
    order = (feedback.time.isoformat(), str(feedback.event_id))
    return Vote(
        voter(feedback, unit_hash), polarity, feedback.body.source, order, feedback.body.kind
    )


def votes_of(feedback: Iterable[FeedbackEvent], unit_hash: str, config: RuleConfig) -> list[Vote]:
    """The polar signals among `feedback` as votes."""
    out: list[Vote] = []
    for item in feedback:
        polarity = signal(item, config) if item.body.kind in POLAR_KINDS else 0
        if polarity:
            out.append(vote_of(item, unit_hash, polarity))
    return out


def settle(votes: Sequence[Vote], config: VoteConfig) -> tuple[Tally, int | str]:
    """The tally of `votes` and its decision (+1, -1, or the reason there is none)."""
    counted = tally(votes, config)
    return counted, decide(counted, config)


def verdict(votes: Sequence[Vote], config: RuleConfig) -> Verdict | None:
    """One answer's verdict: reviewers' majority, else the user's latest vote; None if none."""
    single = config.votes.model_copy(update={"min_votes": 1, "margin": 1})
    counted, decided = settle(votes, single)
    if not isinstance(decided, int):
        return None
    return Verdict(decided, counted.kind, counted.source, tuple(votes))


@dataclass(frozen=True, slots=True)
class Candidate:
    """An answer usable for training: its prompt, text and settled feedback."""

    answer: Answer
    prompt: list[Message]
    key: str
    text: str
    feedback: tuple[FeedbackEvent, ...]  # what the kind filter let through, oldest first
    votes: tuple[Vote, ...]
    verdict: Verdict | None
    reported: bool
    edit: FeedbackEvent | None  # the correction that counts, when usable

    @property
    def completion(self) -> CompletionEvent:
        """The completion event."""
        return self.answer.completion

    @property
    def unit(self) -> str:
        """The unit that got the answer."""
        return self.answer.completion.body.unit_hash

    @property
    def edited(self) -> str | None:
        """The correction's text."""
        return None if self.edit is None else self.edit.body.edited_text

    @property
    def positive(self) -> bool:
        """A positive verdict and no report."""
        return self.verdict is not None and self.verdict.polarity > 0 and not self.reported

    @property
    def negative(self) -> bool:
        """A negative verdict."""
        return self.verdict is not None and self.verdict.polarity < 0


@dataclass(frozen=True, slots=True)
class Unjudged:
    """An usable answer nobody judged: only a regeneration's link to its next answer needs it."""

    app: str
    unit: str
    key: str
    time: datetime
    response_id: str


def admit(
    completion: CompletionEvent, filters: Filters, config: RuleConfig
) -> tuple[list[Message], str] | str:
    """(prompt, text) of an answer rules may use, or why not (a `dropped` reason)."""
    body = completion.body
    if not filters.admits(completion):
        return "filtered"
    if body.status != "ok":
        return "not_ok"
    if body.consent == "none":
        return "consent_none"
    if config.unsafe_categories & {c for c, n in body.safety.items() if n > 0}:
        return "unsafe_completion"
    prompt, text = prompt_messages(completion), answer_text(completion)
    if prompt is None or text is None:
        return "no_content"
    return prompt, text


def unjudged(
    answer: Answer, filters: Filters, config: RuleConfig, dropped: Counter[str]
) -> Unjudged | None:
    """The thread entry of an answer without feedback, when rules could use it."""
    admitted = admit(answer.completion, filters, config)
    if isinstance(admitted, str):
        dropped[admitted] += 1
        return None
    body = answer.completion.body
    return Unjudged(
        body.app, body.unit_hash, prompt_key(admitted[0]), answer.completion.time, body.response_id
    )


def candidates(
    answers: Iterable[Answer], filters: Filters, config: RuleConfig, dropped: Counter[str]
) -> list[Candidate]:
    """Answers that pass the filters and the safety and consent checks, settled."""
    out: list[Candidate] = []
    for answer in answers:
        completion = answer.completion
        body = completion.body
        admitted = admit(completion, filters, config)
        if isinstance(admitted, str):
            dropped[admitted] += 1
            continue
        prompt, text = admitted
        feedback = tuple(
            item
            for item in answer.feedback
            if (filters.kinds is None or item.body.kind in filters.kinds)
            and item.body.source in config.votes.sources
        )
        votes = votes_of(feedback, body.unit_hash, config)
        out.append(
            Candidate(
                answer=answer,
                prompt=prompt,
                key=prompt_key(prompt),
                text=text,
                feedback=feedback,
                votes=tuple(votes),
                verdict=verdict(votes, config),
                reported=any(item.body.kind == "report" for item in feedback),
                edit=_correction(feedback, text, config, dropped),
            )
        )
    return out


def _example(
    kind: Kind,
    rule: str,
    columns: dict[str, Any],
    main: Candidate,
    other: Candidate | None = None,
    *,
    votes: Sequence[Vote] = (),
    group: Sequence[Candidate] = (),
    other_group: Sequence[Candidate] = (),
) -> Example:
    """A row from `main` (and `other`, the rejected answer); groups list every answer voted on."""
    body = main.completion.body
    chosen = [main, *(c for c in group if c is not main)]
    rejected = [] if other is None else [other, *(c for c in other_group if c is not other)]
    units: list[str] = []
    for candidate in (*chosen, *rejected):
        if candidate.unit not in units:
            units.append(candidate.unit)
    return Example(
        kind=kind,
        rule=rule,
        columns=columns,
        flag=body.flag,
        variant=body.variant,
        app=body.app,
        time=main.completion.time,
        units=tuple(units),
        response_ids=tuple(c.completion.body.response_id for c in (*chosen, *rejected)),
        rejected_variant=None if other is None else other.completion.body.variant,
        votes=tuple(votes),
    )


def _correction(
    feedback: Sequence[FeedbackEvent], original: str, config: RuleConfig, dropped: Counter[str]
) -> FeedbackEvent | None:
    """The latest edit (a reviewer's first, when reviewers take precedence), when usable."""
    edits = [item for item in feedback if item.body.kind == "edit"]
    if not edits:
        return None
    if config.votes.reviewer_precedence and any(e.body.source == "reviewer" for e in edits):
        edits = [e for e in edits if e.body.source == "reviewer"]
    edit = max(edits, key=_order)
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
    return edit


def _pair(prompt: list[Message], chosen: str, rejected: str) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}


def edit_rows(pool: Sequence[Candidate], config: RuleConfig) -> list[Example]:
    """`edit`: a DPO pair (edited over original) and, when enabled, an SFT row of the edit."""
    out: list[Example] = []
    for candidate in pool:
        edit, edited = candidate.edit, candidate.edited
        if edit is None or edited is None:
            continue
        votes = [vote_of(edit, candidate.unit, 1)]
        pair = _pair(candidate.prompt, edited, candidate.text)
        out.append(_example("dpo", "edit", pair, candidate, votes=votes))
        if config.sft_edits:
            messages = [*candidate.prompt, *_assistant(edited)]
            out.append(_example("sft", "edit", {"messages": messages}, candidate, votes=votes))
    return out


def regenerate_rows(
    pool: Sequence[Candidate],
    config: RuleConfig,
    dropped: Counter[str],
    others: Sequence[Unjudged] = (),
) -> list[Example]:
    """`regenerate`: the next answer to the same prompt from the same unit, once liked, wins.

    `others` are the thread's answers nobody judged: one of them may be the next answer.
    """
    by_thread: dict[tuple[str, str, str], list[Candidate | Unjudged]] = {}
    for candidate in pool:
        body = candidate.completion.body
        by_thread.setdefault((body.app, body.unit_hash, candidate.key), []).append(candidate)
    for other in others:
        if (other.app, other.unit, other.key) in by_thread:
            by_thread[(other.app, other.unit, other.key)].append(other)
    out: list[Example] = []
    for old in pool:
        asks = [i for i in old.feedback if i.body.kind == "regenerate"]
        if not asks:
            continue
        ask = min(asks, key=_order)
        body = old.completion.body
        limit = ask.time.timestamp() + config.regenerate_window_s
        later = sorted(
            (_when(c), c)
            for c in by_thread[(body.app, body.unit_hash, old.key)]
            if _when(c) > (old.completion.time, body.response_id)
            and _when(c)[0].timestamp() <= limit
        )
        if not later:
            dropped["regenerate_unmatched"] += 1
            continue
        new = later[0][1]  # the first answer after the old one
        if isinstance(new, Unjudged) or not new.positive:
            dropped["regenerate_not_liked"] += 1
            continue
        if old.positive:
            dropped["regenerate_conflict"] += 1  # both liked: no preference to learn
            continue
        if new.text.strip() == old.text.strip():
            dropped["regenerate_same_text"] += 1
            continue
        votes = [vote_of(ask, old.unit, 1)]
        pair = _pair(old.prompt, new.text, old.text)
        out.append(_example("dpo", "regenerate", pair, new, old, votes=votes))
    return out


def _when(answer: Candidate | Unjudged) -> tuple[datetime, str]:
    if isinstance(answer, Unjudged):
        return answer.time, answer.response_id
    return answer.completion.time, answer.completion.body.response_id


@dataclass(frozen=True, slots=True)
class Group:
    """Answers with the same prompt and text (and variant), with their folded votes."""

    answers: tuple[Candidate, ...]  # oldest first
    votes: tuple[Vote, ...]
    counted: Tally
    decided: int | str

    @property
    def first(self) -> Candidate:
        """The oldest answer: the row's time and provenance come first from it."""
        return self.answers[0]

    @property
    def reported(self) -> bool:
        """Any of the answers was reported."""
        return any(c.reported for c in self.answers)


def groups(
    pool: Sequence[Candidate], key: Any, config: VoteConfig, kinds: frozenset[str] | None = None
) -> list[Group]:
    """Candidates grouped by `key(candidate)`, each group's votes (of `kinds`) folded."""
    by_key: dict[Any, list[Candidate]] = {}
    for candidate in pool:
        by_key.setdefault(key(candidate), []).append(candidate)
    out: list[Group] = []
    for members in by_key.values():
        votes = [v for c in members for v in c.votes if kinds is None or v.kind in kinds]
        counted, decided = settle(votes, config)
        out.append(Group(tuple(members), tuple(votes), counted, decided))
    return out


def variant_rows(
    pool: Sequence[Candidate], config: RuleConfig, dropped: Counter[str]
) -> list[Example]:
    """`variants`: the voted-up and a voted-down answer to one prompt of one flag, two variants."""
    flagged = [
        c
        for c in pool
        if c.completion.body.flag is not None and c.completion.body.variant is not None
    ]
    by_prompt: dict[tuple[str, str], list[Group]] = {}
    for group in groups(
        flagged,
        lambda c: (c.completion.body.flag, c.key, c.completion.body.variant, c.text.strip()),
        config.votes,
    ):
        body = group.first.completion.body
        by_prompt.setdefault((str(body.flag), group.first.key), []).append(group)
    out: list[Example] = []
    for answers in by_prompt.values():
        if len({g.first.completion.body.variant for g in answers}) < 2:
            continue
        winners = [g for g in answers if g.decided == 1 and not g.reported]
        losers = [g for g in answers if g.decided == -1]
        for group in answers:
            if isinstance(group.decided, str) and group.counted.total:
                dropped[f"variants_{group.decided}"] += 1
        used: set[int] = set()
        for good in winners:
            for index, bad in enumerate(losers):
                if (
                    index in used
                    or bad.first.completion.body.variant == good.first.completion.body.variant
                    or bad.first.text.strip() == good.first.text.strip()
                ):
                    continue
                used.add(index)  # each voted-down answer pairs once: pairs stay bounded
                votes = [*good.votes, *(v.flipped() for v in bad.votes)]
                pair = _pair(good.first.prompt, good.first.text, bad.first.text)
                out.append(
                    _example(
                        "dpo", "variants", pair, good.first, bad.first,
                        votes=votes, group=good.answers, other_group=bad.answers,
                    )
                )  # fmt: skip
                break
    return out


def preference_rows(
    pool: Sequence[Candidate], everywhere: dict[str, Candidate], dropped: Counter[str]
) -> list[Example]:
    """`preference`: answer A (the response id) against B (other_response_id), the winner chosen.

    `everywhere` holds every candidate of the build, to tell a B that is on the other side
    of the split from one that is missing.
    """
    here = {c.completion.body.response_id: c for c in pool}
    out: list[Example] = []
    for a in pool:
        for item in a.feedback:
            if item.body.kind != "preference":
                continue
            winner, other = item.body.winner, item.body.other_response_id
            if winner in ("tie", "both_bad"):
                dropped[f"preference_{winner}"] += 1
                continue
            b = here.get(other or "")
            if winner is None or b is None:
                reason = "straddles_split" if other in everywhere else "unmatched"
                dropped[f"preference_{reason}" if winner else "preference_no_winner"] += 1
                continue
            if b.key != a.key:
                dropped["preference_other_prompt"] += 1
                continue
            good, bad = (a, b) if winner == "a" else (b, a)
            if good.reported:
                dropped["preference_reported"] += 1
                continue
            if good.text.strip() == bad.text.strip():
                dropped["preference_same_text"] += 1
                continue
            votes = [vote_of(item, a.unit, 1)]
            out.append(
                _example(
                    "dpo", "preference", _pair(a.prompt, good.text, bad.text), good, bad,
                    votes=votes,
                )
            )  # fmt: skip
    return out


def kto_rows(pool: Sequence[Candidate], config: RuleConfig, dropped: Counter[str]) -> list[Example]:
    """KTO: every (prompt, answer) labelled by the majority of its votes of `kto_kinds`."""
    out: list[Example] = []
    kinds = frozenset(config.kto_kinds)
    for group in groups(pool, lambda c: (c.key, c.text), config.votes, kinds):
        if not group.votes:
            continue
        if isinstance(group.decided, str):
            dropped[f"kto_{group.decided}"] += 1
            continue
        if group.decided > 0 and group.reported:
            dropped["kto_reported"] += 1
            continue
        label = group.decided > 0
        columns = {
            "prompt": group.first.prompt,
            "completion": _assistant(group.first.text),
            "label": label,
        }
        votes = [v if label else v.flipped() for v in group.votes]
        out.append(
            _example(
                "kto", group.counted.kind, columns, group.first, votes=votes, group=group.answers
            )
        )
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
        votes = [v for v in settled.votes if v.polarity > 0]
        out.append(_example("sft", settled.kind, {"messages": messages}, candidate, votes=votes))
    return out


def apply_rules(
    pool: Sequence[Candidate],
    config: RuleConfig,
    dropped: Counter[str],
    everywhere: dict[str, Candidate] | None = None,
    others: Sequence[Unjudged] = (),
) -> list[Example]:
    """Every rule over one split's candidates (and unjudged answers), in a fixed order."""
    if everywhere is None:
        everywhere = {c.completion.body.response_id: c for c in pool}
    return [
        *edit_rows(pool, config),
        *regenerate_rows(pool, config, dropped, others),
        *variant_rows(pool, config, dropped),
        *preference_rows(pool, everywhere, dropped),
        *kto_rows(pool, config, dropped),
        *sft_rows(pool, config),
    ]
