"""A build bounded in memory: spill events to disk by response id, join each part, spill the
answers by prompt, make each part's rows (an external hash join, two levels).

1. Every line goes to one of `parts` files by a hash of its response id, so a completion, all
   feedback on it and every redelivered copy land together. Preferences' answer B ids are
   kept in memory (one string per preference).
2. Each part is joined on its own (join.py); every judged answer goes, as one JSON line, to
   one of `parts` files by a hash of its prompt; an answer nobody judged goes there as a
   short thread entry (app, unit, prompt key, time, id: a regeneration may point at it).
3. Each prompt part gives its rows (build.rows_of): every rule looks at answers with one
   prompt only, so the rows are those of the in-memory build (a property test checks it).

Memory holds one part at a time, the ids of preferences' B answers, and the output rows; the
spill files take about twice the input on disk (`workdir`, removed afterwards).
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO

import orjson

from feedback.datasets.build import (
    SPLITS,
    BuildConfig,
    Built,
    Row,
    Split,
    finish,
    passes,
    rows_of,
    sort_out,
)
from feedback.datasets.join import Answer, JoinConfig, JoinStats, join, parse_lines
from feedback.datasets.rules import KINDS, Kind, Unjudged, prompt_key, prompt_messages
from feedback.schema import CompletionEvent, FeedbackEvent, to_json

Progress = Callable[[str, int], None]
DEFAULT_PARTS = 64


def part_of(key: str, parts: int) -> int:
    """The spill file of a key (crc32: stable across processes, unlike hash())."""
    return zlib.crc32(key.encode()) % parts


def _route(line: bytes, referenced: set[str]) -> str:
    """The response id a raw line belongs to ("" when it has none or is unreadable)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return ""
    body = data.get("body") if isinstance(data, dict) else None
    if not isinstance(body, dict):
        return ""
    other = body.get("other_response_id")
    if isinstance(other, str) and data.get("type") == "feedback":
        referenced.add(other)
    rid = body.get("response_id")
    return rid if isinstance(rid, str) else ""


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for line in handle:
            yield line.rstrip(b"\n")


def _spill(items: Iterable[tuple[str, bytes]], directory: Path, parts: int) -> list[Path]:
    """Write each (key, line) to the part file of its key; returns the part files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{i:04d}.jsonl" for i in range(parts)]
    with ExitStack() as stack:
        handles: list[IO[bytes]] = [stack.enter_context(open(p, "wb")) for p in paths]
        for key, line in items:
            handles[part_of(key, parts)].write(line.replace(b"\n", b" ") + b"\n")
    return paths


def _answer_line(answer: Answer) -> bytes:
    feedback = b",".join(to_json(f) for f in answer.feedback)
    return b'{"c":' + to_json(answer.completion) + b',"f":[' + feedback + b"]}"


def _unjudged_line(entry: Unjudged) -> bytes:
    when = entry.time.isoformat()
    return orjson.dumps({"u": [entry.app, entry.unit, entry.key, when, entry.response_id]})


def _read_part(path: Path) -> tuple[list[Answer], list[Unjudged]]:
    answers: list[Answer] = []
    others: list[Unjudged] = []
    for line in _lines(path):
        data = orjson.loads(line)
        if "u" in data:
            app, unit, key, when, rid = data["u"]
            others.append(Unjudged(app, unit, key, datetime.fromisoformat(when), rid))
            continue
        feedback = tuple(FeedbackEvent.model_validate(f) for f in data["f"])
        answers.append(Answer(CompletionEvent.model_validate(data["c"]), feedback))
    answers.sort(key=lambda a: (a.completion.time, a.completion.body.response_id))
    return answers, others


def build_external(
    lines: Iterable[bytes],
    config: BuildConfig,
    *,
    stats: JoinStats | None = None,
    workdir: Path | None = None,
    parts: int = DEFAULT_PARTS,
    progress: Progress | None = None,
) -> Built:
    """The rows of `build(parse_lines(lines))`, holding one part of the events at a time."""
    stats = stats if stats is not None else JoinStats()
    tick = progress or (lambda _phase, _n: None)
    ran = passes(config)  # first: a pass that cannot load fails the build before any work
    scratch = Path(tempfile.mkdtemp(prefix="loopgate-build-", dir=workdir))
    try:
        referenced: set[str] = set()
        read = 0

        def by_response() -> Iterator[tuple[str, bytes]]:
            nonlocal read
            for line in lines:
                read += 1
                if read % 10_000 == 0:
                    tick("read", read)
                yield _route(line, referenced), line

        by_rid = _spill(by_response(), scratch / "by-response", parts)
        tick("read", read)
        join_config = JoinConfig(config.skew_s, config.max_feedback_age_s)

        dropped: Counter[str] = Counter()

        def answers() -> Iterator[tuple[str, bytes]]:
            for index, path in enumerate(by_rid):
                joined = join(parse_lines(_lines(path), stats), join_config, stats)
                path.unlink()
                tick("join", index + 1)
                judged, others = sort_out(joined.answers, referenced, config, stats, dropped)
                for answer in judged:
                    prompt = prompt_messages(answer.completion)
                    yield (prompt_key(prompt) if prompt is not None else ""), _answer_line(answer)
                for entry in others:
                    yield entry.key, _unjudged_line(entry)

        by_prompt = _spill(answers(), scratch / "by-prompt", parts)
        rows: dict[tuple[Kind, Split], list[Row]] = {(k, s): [] for k in KINDS for s in SPLITS}
        for index, path in enumerate(by_prompt):
            part, others = _read_part(path)
            for key, made in rows_of(part, config, dropped, others, ran.cleaners).items():
                rows[key].extend(made)
            path.unlink()
            tick("rules", index + 1)
        return finish(rows, stats, dropped, ran)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
