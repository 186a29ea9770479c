"""Safety check: text -> findings by category, from a fast built-in rule set (pure).

One precompiled alternation per rule set, each category a named group, so a text is
scanned once whatever the number of categories. An external classifier plugs in through
the SafetyClassifier protocol; the gateway calls it off the request path (gateway/observe.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

Findings = dict[str, int]
Source = Literal["prompt", "answer"]

# Built-in categories and their patterns, matched on the lowercased text. Phrasing, not
# single words, so ordinary talk about these topics does not count. Each pattern starts
# with literal text (its anchor); a pattern's regex runs only when its anchor is a
# substring of the text, so a clean text costs one substring search per pattern (about
# 0.05 us per character in all with the built-in set).
BUILTIN: dict[str, tuple[str, ...]] = {
    "jailbreak": (
        r"ignore (?:all |any |the |your )?(?:previous|prior|above|earlier) "
        r"(?:instructions|rules|prompts?|directions)",
        r"disregard (?:all |any |the |your )?(?:previous |prior )?"
        r"(?:instructions|rules|guidelines|polic(?:y|ies))",
        r"do anything now\b",
        r"you are (?:now )?dan\b",
        r"developer mode\b",
        r"god mode\b",
        r"unrestricted mode\b",
        r"jailbreak\b",
        r"jailbroken\b",
        r"bypass (?:your |the |any )?(?:safety|content|ethical) "
        r"(?:filters?|restrictions|guidelines)",
        r"pretend (?:that )?(?:you are|you're|to be) .{0,40}?(?:no|without) "
        r"(?:restrictions|limits|filters|rules)",
        r"reveal (?:your|the) (?:system|hidden|initial) prompt",
        r"repeat (?:your|the) (?:system|hidden|initial) prompt",
    ),
    "self_harm": (
        r"kill myself\b",
        r"hurt myself\b",
        r"harm myself\b",
        r"cut myself\b",
        r"end my (?:own )?life\b",
        r"suicide\b",
        r"suicidal\b",
        r"self[- ]?harm",
        r"want to die\b",
        r"wanna die\b",
        r"no reason to (?:live|go on)\b",
    ),
    "weapons": (
        r"pipe bomb",
        r"build (?:a |an )?(?:bomb|explosive)",
        r"make (?:a |an )?(?:bomb|explosive)",
        r"nerve agent",
        r"sarin\b",
        r"ricin\b",
        r"ghost gun",
        r"untraceable (?:gun|firearm)",
    ),
    "malware": (
        r"ransomware\b",
        r"keylogger\b",
        r"credential stealer",
    ),
}


class SafetyRules:
    """A compiled rule set: the built-in categories plus configured policy keywords."""

    __slots__ = ("_categories", "_max_chars", "_rules")

    def __init__(
        self,
        keywords: Mapping[str, Sequence[str]] | None = None,
        *,
        builtin: Mapping[str, Sequence[str]] = BUILTIN,
        max_chars: int = 8_000,
    ) -> None:
        rules: list[tuple[str, str, re.Pattern[str]]] = []
        for category, patterns in builtin.items():
            for pattern in patterns:
                anchor = _anchor(pattern)
                if not anchor:
                    raise ValueError(f"pattern {pattern!r} must start with literal text")
                rules.append((category, anchor, re.compile(pattern)))
        for category, words in (keywords or {}).items():
            for word in words:
                literal = " ".join(word.lower().split())
                if literal:
                    rules.append((category, literal, re.compile(re.escape(literal) + r"\b")))
        self._rules = tuple(rules)
        self._categories = tuple(dict.fromkeys(c for c, _, _ in rules))
        self._max_chars = max_chars

    @property
    def categories(self) -> tuple[str, ...]:
        """Every category these rules can report (bounded: metric labels come from it)."""
        return self._categories

    def check(self, text: str) -> Findings:
        """Matches by category in the first max_chars of text; empty when clean."""
        if not text:
            return {}
        low = text[: self._max_chars].lower()
        found: Findings = {}
        for category, anchor, regex in self._rules:
            if anchor not in low:
                continue
            for match in regex.finditer(low):
                start = match.start()
                if start and (low[start - 1].isalnum() or low[start - 1] == "_"):
                    continue  # inside a word: "skill myself" is not "kill myself"
                found[category] = found.get(category, 0) + 1
        return found


def _anchor(pattern: str) -> str:
    """The literal text every match of a built-in pattern starts with."""
    plain = re.match(r"[a-z0-9 ']*", pattern)
    anchor = plain.group(0) if plain else ""
    # A quantifier after the last plain character makes that character optional.
    if pattern[len(anchor) : len(anchor) + 1] in ("?", "*", "{"):
        anchor = anchor[:-1]
    return anchor


def prompt_text(request: Mapping[str, object]) -> str:
    """The text to check on the way in: the last user message (earlier turns were checked)."""
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        return prompt[-1]
    return ""


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def merge(into: Findings, found: Mapping[str, int]) -> Findings:
    """Add found counts into `into` (in place) and return it."""
    for category, count in found.items():
        into[category] = into.get(category, 0) + count
    return into


class SafetyClassifier(Protocol):
    """An external classifier (a moderation model or service), called off the request path."""

    async def classify(self, text: str, source: Source) -> Mapping[str, int]:
        """Findings by category for one text; raise on failure (counted, never retried)."""
        ...

    async def aclose(self) -> None:
        """Release clients."""
        ...
