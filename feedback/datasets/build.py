"""From events to datasets: join, rules, output redaction, dedupe and split (pure)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field

from feedback.datasets.join import Answer, JoinConfig, JoinStats, join, referenced_ids
from feedback.datasets.rules import (
    KINDS,
    Example,
    Filters,
    Kind,
    RuleConfig,
    Unjudged,
    apply_rules,
    candidates,
    settle,
    unjudged,
)
from feedback.datasets.thorough import ThoroughConfig
from feedback.datasets.thorough import load as load_thorough
from feedback.datasets.votes import Vote, share
from feedback.redact import Findings, Redactor
from feedback.schema import Event

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")
Row = dict[str, Any]


class BuildConfig(BaseModel):
    """Everything that decides a build's content (all of it goes into the manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filters: Filters = Filters()
    rules: RuleConfig = RuleConfig()
    skew_s: float = Field(300.0, ge=0)
    max_feedback_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    test_fraction: float = Field(0.1, ge=0, le=1)
    split_salt: str = "loopgate-datasets-v1"
    # Re-run redaction over every output text: events are redacted at emission, this
    # catches a gateway that ran with redaction off or older patterns.
    redact_outputs: bool = True
    # The second, thorough pass (Presidio) after the regex one; see thorough.py.
    thorough: ThoroughConfig = ThoroughConfig()


@dataclass
class Built:
    """Rows per (kind, split), the counters, and the content hash."""

    rows: dict[tuple[Kind, Split], list[Row]]
    join: JoinStats
    dropped: Counter[str] = field(default_factory=Counter)
    content_hash: str = ""
    redaction: list[str] = field(default_factory=lambda: ["regex"])
    notes: list[str] = field(default_factory=list)

    def count(self, kind: Kind, split: Split) -> int:
        """Rows of one file."""
        return len(self.rows[(kind, split)])


class Cleaner(Protocol):
    """A redaction pass over a row's content (feedback.redact.Redactor, thorough.Thorough)."""

    def redact_value(self, value: Any, findings: Findings) -> Any:
        """The value with what the pass finds replaced; findings counted."""
        ...


@dataclass(frozen=True)
class Passes:
    """The redaction passes a build runs over output rows, made once per build."""

    cleaners: tuple[Cleaner, ...]
    names: tuple[str, ...]
    notes: tuple[str, ...] = ()


def passes(config: BuildConfig) -> Passes:
    """The regex pass (unless redact_outputs is off), then the thorough one when it loads."""
    if not config.redact_outputs:
        return Passes((), ("none",))
    thorough, why_not = load_thorough(config.thorough)
    if thorough is None:
        notes = (f"thorough pass not run: {why_not}",) if why_not else ()
        return Passes((Redactor(),), ("regex",), notes)
    return Passes((Redactor(), thorough), ("regex", thorough.label))


def split_of(unit_hash: str, salt: str, test_fraction: float) -> Split:
    """train or test from the unit hash alone: a unit stays on one side across rebuilds."""
    digest = hashlib.sha256(f"{salt}\0{unit_hash}".encode()).digest()
    point = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    return "test" if point < test_fraction else "train"


def to_row(example: Example) -> Row:
    """The file row: TRL's columns first, then provenance (votes are filled in by `_settle`)."""
    row: Row = dict(example.columns)
    row.update(
        rule=example.rule,
        flag=example.flag,
        variant=example.variant,
        app=example.app,
        time=example.time.isoformat().replace("+00:00", "Z"),
        unit_hashes=list(example.units),
        response_ids=list(example.response_ids),
    )
    if example.kind == "dpo":
        row["rejected_variant"] = example.rejected_variant
    return row


def canonical(row: Row) -> bytes:
    """Sorted-key JSON of a row: the unit of dedupe order and of the content hash."""
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


def _dedupe_key(kind: Kind, row: Row) -> tuple[bytes, bytes]:
    """(content, direction): rows with the same content and another direction contradict."""
    if kind == "dpo":
        chosen, rejected = canonical({"c": row["chosen"]}), canonical({"c": row["rejected"]})
        low, high = sorted((chosen, rejected))
        content = canonical({"p": row["prompt"]}) + b"\0" + low + b"\0" + high
        return content, b"+" if chosen == low else b"-"
    if kind == "kto":
        label = b"+" if row["label"] else b"-"
        return canonical({"p": row["prompt"], "c": row["completion"]}), label
    return canonical({"m": row["messages"]}), b""


def _redact_row(row: Row, cleaners: Sequence[Cleaner], unsafe: frozenset[str]) -> Row | None:
    findings: dict[str, int] = {}
    cleaned: Any = {
        k: row[k] for k in ("prompt", "chosen", "rejected", "completion", "messages") if k in row
    }
    for cleaner in cleaners:
        cleaned = cleaner.redact_value(cleaned, findings)
    if unsafe & set(findings):
        return None
    return {**row, **cleaned} if findings else row


def _settle(
    kind: Kind, rows: list[tuple[Row, tuple[Vote, ...]]], config: RuleConfig, dropped: Counter[str]
) -> list[Row]:
    """Rows with the same content fold their votes: the majority direction's earliest row stays.

    A pair in both directions, or one prompt and answer labelled both ways (rows that only
    output redaction made identical), is settled by the votes as in votes.py; only a true
    tie (or less than the margin) drops the content. Votes in each row are for what it says.
    """
    groups: dict[bytes, list[tuple[bytes, Row, tuple[Vote, ...]]]] = {}
    for row, votes in rows:
        key, direction = _dedupe_key(kind, row)
        groups.setdefault(key, []).append((direction, row, votes))
    single = config.votes.model_copy(update={"min_votes": 1})
    out: list[Row] = []
    for group in groups.values():
        # Votes on the group's first direction: a vote for the other direction is against it.
        first = min(direction for direction, _, _ in group)
        folded = [
            v if direction == first else v.flipped() for direction, _, vs in group for v in vs
        ]
        counted, decided = settle(folded, single)
        if isinstance(decided, str):
            dropped[f"{kind}_{decided}"] += len(group)
            continue
        winning = first if decided > 0 else next(d for d, _, _ in group if d != first)
        kept = [row for direction, row, _ in group if direction == winning]
        if len(kept) < len(group):
            dropped[f"{kind}_outvoted"] += len(group) - len(kept)
        if len(kept) > 1:
            dropped[f"{kind}_duplicate"] += len(kept) - 1
        row = min(kept, key=lambda r: (r["time"], canonical(r)))
        polarity = 1 if winning == first else -1
        row.update(
            source=counted.source,
            votes=counted.positive if polarity > 0 else counted.negative,
            votes_against=counted.negative if polarity > 0 else counted.positive,
            weight=round(share(counted, polarity), 6),
        )
        out.append(row)
    return out


def content_hash(rows: dict[tuple[Kind, Split], list[Row]]) -> str:
    """sha256 over every row's canonical JSON, sorted within each (kind, split)."""
    digest = hashlib.sha256()
    for kind in KINDS:
        for split in SPLITS:
            for line in sorted(canonical(row) for row in rows[(kind, split)]):
                digest.update(f"{kind}\0{split}\0".encode() + line + b"\n")
    return "sha256:" + digest.hexdigest()


def sort_out(
    answers: Iterable[Answer],
    referenced: set[str],
    config: BuildConfig,
    stats: JoinStats,
    dropped: Counter[str],
) -> tuple[list[Answer], list[Unjudged]]:
    """Judged answers (feedback, or named by a preference) whole; the rest as thread entries."""
    judged: list[Answer] = []
    others: list[Unjudged] = []
    for answer in answers:
        if answer.feedback or answer.completion.body.response_id in referenced:
            judged.append(answer)
            continue
        stats.unjudged += 1
        entry = unjudged(answer, config.filters, config.rules, dropped)
        if entry is not None:
            others.append(entry)
    return judged, others


def rows_of(
    answers: Iterable[Answer],
    config: BuildConfig,
    dropped: Counter[str],
    others: Sequence[Unjudged] = (),
    cleaners: Sequence[Cleaner] = (),
) -> dict[tuple[Kind, Split], list[Row]]:
    """Rows of judged answers (unsorted): split by unit, rules per split, clean, fold votes.

    Every rule looks only at answers with one prompt, so any partition of the answers by
    prompt gives the same rows part by part (external.py relies on it).
    """
    pool = candidates(answers, config.filters, config.rules, dropped)
    everywhere = {c.completion.body.response_id: c for c in pool}
    salt, fraction = config.split_salt, config.test_fraction
    rows: dict[tuple[Kind, Split], list[Row]] = {(k, s): [] for k in KINDS for s in SPLITS}
    for split in SPLITS:
        # Rules run within one split: a pair or a vote count never joins units of both sides.
        side = [c for c in pool if split_of(c.unit, salt, fraction) == split]
        threads = [o for o in others if split_of(o.unit, salt, fraction) == split]
        by_kind: dict[Kind, list[tuple[Row, tuple[Vote, ...]]]] = {kind: [] for kind in KINDS}
        for example in apply_rules(side, config.rules, dropped, everywhere, threads):
            row: Row | None = to_row(example)
            if cleaners and row is not None:
                row = _redact_row(row, cleaners, config.rules.unsafe_categories)
            if row is None:
                dropped["unsafe_on_output"] += 1
                continue
            by_kind[example.kind].append((row, example.votes))
        for kind in KINDS:
            rows[(kind, split)] = _settle(kind, by_kind[kind], config.rules, dropped)
    return rows


def finish(
    rows: dict[tuple[Kind, Split], list[Row]],
    stats: JoinStats,
    dropped: Counter[str],
    ran: Passes | None = None,
) -> Built:
    """Sort every file's rows by time and hash them."""
    for key in rows:
        rows[key].sort(key=lambda r: (r["time"], canonical(r)))
    names, notes = (["regex"], []) if ran is None else (list(ran.names), list(ran.notes))
    return Built(rows, stats, dropped, content_hash(rows), names, notes)


def build(events: Iterable[Event], config: BuildConfig, stats: JoinStats | None = None) -> Built:
    """Join and make the rows, all in memory; same events in any order, same rows."""
    joined = join(events, JoinConfig(config.skew_s, config.max_feedback_age_s), stats)
    dropped: Counter[str] = Counter()
    referenced = referenced_ids(f for answer in joined.answers for f in answer.feedback)
    judged, others = sort_out(joined.answers, referenced, config, joined.stats, dropped)
    ran = passes(config)
    made = rows_of(judged, config, dropped, others, ran.cleaners)
    return finish(made, joined.stats, dropped, ran)
