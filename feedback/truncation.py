"""Cutting an event's content until its JSON fits a byte budget, keeping it schema-valid (pure).

Only content is cut (messages, prompt, params, response text and tool calls, error message;
feedback's edited text, comment and metadata; an audit's before, after and reason): never an
id, a key, a flag, a count or a timing. Every cut string ends with a marker that gives the
string's original size, and strings only ever get shorter, so the event still validates
against the shipped JSON Schemas (they bound lengths from above, never from below).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

MARKER = "[truncated by loopgate: {size} bytes]"

# Where content lives, per event type, as paths under the event (body first).
_CONTENT: dict[str, tuple[tuple[str, ...], ...]] = {
    "completion": (
        ("body", "request"),
        ("body", "response"),
        ("body", "error", "message"),
    ),
    "feedback": (("body", "edited_text"), ("body", "comment"), ("body", "metadata")),
}
_AUDIT_CONTENT = (("body", "before"), ("body", "after"), ("body", "reason"))

_Slot = tuple[Any, Any, str]  # (container, key or index, original string)


def _strings(node: Any, parent: Any, key: Any) -> Iterator[_Slot]:
    if isinstance(node, str):
        yield parent, key, node
    elif isinstance(node, dict):
        for name, value in node.items():
            yield from _strings(value, node, name)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, node, index)


def _content_strings(event: dict[str, Any]) -> list[_Slot]:
    paths = _CONTENT.get(str(event.get("type")), _AUDIT_CONTENT)
    slots: list[_Slot] = []
    for path in paths:
        parent: Any = event
        for name in path[:-1]:
            parent = parent.get(name) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            slots.extend(_strings(parent[path[-1]], parent, path[-1]))
    return slots


def _cut(text: str, keep: int) -> str | None:
    """`text` cut to at most `keep` UTF-8 bytes plus the marker, or None if that saves nothing."""
    raw = text.encode("utf-8", "surrogatepass")
    head = raw[:keep].decode("utf-8", "ignore")
    cut = head + MARKER.format(size=len(raw))
    # Shorter in bytes (the budget) and in characters (the schemas' max lengths).
    if len(cut.encode("utf-8", "surrogatepass")) >= len(raw) or len(cut) >= len(text):
        return None
    return cut


def _apply(slots: list[_Slot], keep: int) -> None:
    for parent, key, original in slots:
        cut = _cut(original, keep)
        parent[key] = original if cut is None else cut


def _size(event: dict[str, Any]) -> int:
    return len(orjson.dumps(event, option=orjson.OPT_UTC_Z))


def fit(value: bytes, budget: int) -> bytes | None:
    """The event with its longest content strings cut so it is at most `budget` bytes.

    None when it cannot be done: not a JSON object, or too big even with every content
    string cut (a huge number of small items). Content strings are cut to one common
    length, the largest that fits, so short fields (roles, names) survive whole.
    """
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    return _fit_slots(event, _content_strings(event), budget)


def fit_content(content: dict[str, Any], budget: int) -> bytes | None:
    """Content fields (as the sealer gathers them) cut the same way to at most `budget` bytes."""
    return _fit_slots(content, list(_strings(content, None, None)), budget)


def _fit_slots(obj: dict[str, Any], slots: list[_Slot], budget: int) -> bytes | None:
    if not slots:
        return None
    longest = max(len(original.encode("utf-8", "surrogatepass")) for _, _, original in slots)
    low, high, best = 0, longest, -1
    while low <= high:  # the largest common length that fits
        keep = (low + high) // 2
        _apply(slots, keep)
        if _size(obj) <= budget:
            best, low = keep, keep + 1
        else:
            high = keep - 1
    if best < 0:
        return None
    _apply(slots, best)
    out = orjson.dumps(obj, option=orjson.OPT_UTC_Z)
    return out if len(out) <= budget else None
