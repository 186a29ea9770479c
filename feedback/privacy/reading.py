"""Event lines opened for readers that build from content: erased events left out, counted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from feedback.privacy.keys import KeyReader
from feedback.privacy.seal import SealError, open_event

_UNSEALED = b'"sealed":null'  # how compact JSON (orjson) writes a body never sealed


@dataclass
class ErasureCounts:
    """What opening the lines left out."""

    erased_events: int = 0
    erased_units: set[str] = field(default_factory=set)
    unreadable: int = 0  # sealed content that did not authenticate


def open_lines(lines: Iterable[bytes], keys: KeyReader, counts: ErasureCounts) -> Iterator[bytes]:
    """The lines with sealed content restored; events of forgotten units are skipped."""
    for line in lines:
        if b'"sealed"' not in line or _UNSEALED in line:
            yield line  # never sealed: no need to parse it here
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield line  # the parser downstream counts it as unreadable
            continue
        try:
            opened = open_event(event, keys)
        except SealError:
            counts.unreadable += 1
            continue
        if opened.get("erased"):
            counts.erased_events += 1
            counts.erased_units.add(str(opened["body"].get("unit_hash")))
            continue
        yield orjson.dumps(opened)
