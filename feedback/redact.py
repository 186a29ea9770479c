"""Redaction: text -> (redacted text, findings by category), before anything leaves (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from feedback.config import RedactionConfig
from feedback.pii_shapes import (
    ASSIGNED_VALUE,
    DIGIT,
    DIGIT_CLUSTER,
    DIGIT_RULES,
    EMAIL,
    IBAN,
    IBAN_HINT,
    IPV6,
    KEY_RULES,
    KEYWORD_REACH,
    PLACEHOLDERS,
    PLAIN,
    RULE_BY_TRIGGER,
    SECRET_KEYWORDS,
    SMALLEST_PII,
    TRIGGER,
    DigitRule,
    iban_ok,
    ipv6_ok,
    luhn_ok,
    nanp_ok,
    number_category,
    tax_id_ok,
)

__all__ = [
    "PLACEHOLDERS",
    "Findings",
    "Redactor",
    "iban_ok",
    "luhn_ok",
    "nanp_ok",
    "tax_id_ok",
]

Findings = dict[str, int]


def _alternation(rules: Sequence[DigitRule]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{rule.name}>{rule.pattern})" for rule in rules))


_CLEAN_CHARS, _CLEAN_SIZE = 64, 4096  # the clean-string memory: at most ~0.5 MB


def _unique_key(key: str, taken: Mapping[Any, Any]) -> str:
    count = 2
    while f"{key}#{count}" in taken:
        count += 1
    return f"{key}#{count}"


class Redactor:
    """Finds personal data and secrets in text and replaces them with `[CATEGORY]`."""

    def __init__(
        self, patterns: Mapping[str, str] | None = None, allow: Sequence[str] = ()
    ) -> None:
        self._digits = _alternation(DIGIT_RULES)
        self._rules = {rule.name: rule for rule in DIGIT_RULES}
        # Standalone forms, to re-test a span whose first-choice rule failed its check.
        self._standalone = {rule.name: re.compile(rule.pattern) for rule in DIGIT_RULES}
        self._extra = [
            (category, re.compile(pattern), f"[{category.upper()}]")
            for category, pattern in (patterns or {}).items()
        ]
        self._allow = re.compile("|".join(f"(?:{a})" for a in allow)) if allow else None
        # Extra patterns could match anything, even an enum value: then every string is scanned.
        self._plain = frozenset() if self._extra else PLAIN
        self._clean: set[str] = set()

    @classmethod
    def from_config(cls, config: RedactionConfig) -> Redactor:
        """A redactor with the configured extra patterns and allow-list."""
        return cls(config.patterns, config.allow)

    def redact(self, text: str) -> tuple[str, Findings]:
        """The redacted text and how many findings of each category it had."""
        findings: Findings = {}
        return self.redact_into(text, findings), findings

    def redact_into(self, text: str, findings: Findings) -> str:
        """Redact text, adding its findings to `findings`."""
        # Order matters: keys and secrets hold digits and '@' that later shapes would split.
        for triggers, category, pattern in KEY_RULES:
            for trigger in triggers:  # a plain loop: no generator per rule on a hot path
                if trigger in text:
                    replace = self._replacer(category, PLACEHOLDERS[category], findings)
                    text = pattern.sub(replace, text)
                    break
        if "=" in text or ":" in text:
            text = self._redact_assignments(text, findings)
        if "@" in text:
            text = EMAIL.sub(self._replacer("email", PLACEHOLDERS["email"], findings), text)
        if text.count(":") >= 2:
            text = IPV6.sub(lambda m: self._replace_ipv6(m, findings), text)
        # Every shape below holds a digit: one scan for the first spares the text the others,
        # and the keyword and IBAN passes start just before it.
        digit = DIGIT.search(text)
        if digit is not None:
            first = digit.start()
            text = self._redact_keyword_rules(text, first, findings)
            text = self._redact_ibans(text, first, findings)
            if DIGIT_CLUSTER.search(text):
                text = self._redact_digits(text, findings)
        for category, pattern, placeholder in self._extra:
            text = pattern.sub(self._replacer(category, placeholder, findings), text)
        return text

    def _allowed(self, text: str) -> bool:
        return self._allow is not None and self._allow.fullmatch(text) is not None

    def _count(self, category: str, findings: Findings) -> None:
        findings[category] = findings.get(category, 0) + 1

    def _replacer(
        self, category: str, placeholder: str, findings: Findings
    ) -> Callable[[re.Match[str]], str]:
        def replace(match: re.Match[str]) -> str:
            span = match.group(0)
            if self._allowed(span):
                return span
            self._count(category, findings)
            return placeholder

        return replace

    def _redact_assignments(self, text: str, findings: Findings) -> str:
        lower = text.lower()
        spans: list[tuple[int, int]] = []
        for keyword in SECRET_KEYWORDS:
            index = lower.find(keyword)
            while index >= 0:
                match = ASSIGNED_VALUE.match(text, index + len(keyword))
                if match and not self._allowed(match.group(1)):
                    spans.append(match.span(1))
                index = lower.find(keyword, index + 1)
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for start, end in sorted(spans):
            if start < last:
                continue  # `api_key` and `key` found the same value
            out += (text[last:start], PLACEHOLDERS["secret"])
            self._count("secret", findings)
            last = end
        out.append(text[last:])
        return "".join(out)

    def _redact_keyword_rules(self, text: str, first_digit: int, findings: Findings) -> str:
        # A value starts with a digit soon after its keyword: no keyword can matter before
        # the first digit's reach.
        begin = max(0, first_digit - KEYWORD_REACH)
        lower = text[begin:].lower()
        if len(lower) != len(text) - begin:  # a few characters lowercase to two
            lower = "".join(char.lower()[:1] for char in text[begin:])
        spans: list[tuple[int, int, str]] = []
        for trigger in TRIGGER.finditer(lower):
            rule = RULE_BY_TRIGGER[trigger.group()]
            match = rule.pattern.match(text, begin + trigger.start())
            if match is None:
                continue
            value = match.group("value")
            if (rule.check is None or rule.check(value)) and not self._allowed(value):
                spans.append((match.start("value"), match.end("value"), rule.category))
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for begin, end, category in sorted(spans):
            if begin < last:
                continue  # `tel` and `telefon` found the same number
            out += (text[last:begin], PLACEHOLDERS[category])
            self._count(category, findings)
            last = end
        out.append(text[last:])
        return "".join(out)

    def _redact_ibans(self, text: str, first_digit: int, findings: Findings) -> str:
        # An IBAN's country letters sit just before its first digits.
        hint = IBAN_HINT.search(text, max(0, first_digit - 2))
        if hint is None:
            return text
        out: list[str] = []
        last = 0
        for match in IBAN.finditer(text, hint.start()):
            out += (text[last : match.start()], self._replace_iban(match, findings))
            last = match.end()
        out.append(text[last:])
        return "".join(out)

    def _replace_ipv6(self, match: re.Match[str], findings: Findings) -> str:
        span = match.group(0)
        # Three groups at least: `a::b` in code is an address in form only.
        groups = sum(1 for group in span.split(":") if group)
        if groups < 3 or not ipv6_ok(span) or self._allowed(span):
            return span
        self._count("ip_address", findings)
        return PLACEHOLDERS["ip_address"]

    def _replace_iban(self, match: re.Match[str], findings: Findings) -> str:
        span = match.group(0)
        if not iban_ok(span) or self._allowed(span):
            return span
        self._count("iban", findings)
        return PLACEHOLDERS["iban"]

    def _redact_digits(self, text: str, findings: Findings) -> str:
        out: list[str] = []
        last = 0
        for cluster in DIGIT_CLUSTER.finditer(text):
            # One character past the cluster, so lookaheads see what follows it.
            end = min(len(text), cluster.end() + 1)
            for match in self._digits.finditer(text, cluster.start(), end):
                if match.start() < last:
                    continue
                out += (text[last : match.start()], self._replace_digits(match, findings))
                last = match.end()
        out.append(text[last:])
        return "".join(out)

    def _replace_digits(self, match: re.Match[str], findings: Findings) -> str:
        span = match.group(0)
        name = match.lastgroup or ""
        if self._allowed(span):
            return span
        if name == "card":
            return self._replace_card(span, findings)
        rule = self._rules[name]
        if rule.check is None or rule.check(span):
            self._count(rule.category, findings)
            return PLACEHOLDERS[rule.category]
        return self._fallback(span, name, findings)

    def _fallback(self, span: str, failed: str, findings: Findings) -> str:
        # The first shape that matched failed its check; a later shape may still fit.
        names = [rule.name for rule in DIGIT_RULES]
        for name in names[names.index(failed) + 1 :]:
            rule = self._rules[name]
            if self._standalone[name].fullmatch(span) and (rule.check is None or rule.check(span)):
                self._count(rule.category, findings)
                return PLACEHOLDERS[rule.category]
        return span

    def _replace_card(self, span: str, findings: Findings) -> str:
        redacted = self._cards_in(span, findings)
        return redacted if redacted != span else self._fallback(span, "card", findings)

    def _cards_in(self, span: str, findings: Findings) -> str:
        core = span.strip(" -")
        digits = core.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            self._count("card", findings)
            lead = span[: len(span) - len(span.lstrip(" -"))]
            return f"{lead}{PLACEHOLDERS['card']}{span[len(span.rstrip(' -')) :]}"
        # Cards run into neighbouring digit groups: windows cut at separators, longest first.
        cuts = [0] + [i + 1 for i, char in enumerate(span) if char in " -"] + [len(span) + 1]
        for size in range(len(cuts) - 1, 0, -1):
            for first in range(len(cuts) - size):
                start, end = cuts[first], cuts[first + size] - 1
                compact = span[start:end].replace(" ", "").replace("-", "")
                if 13 <= len(compact) <= 19 and luhn_ok(compact):
                    self._count("card", findings)
                    before = self._cards_in(span[:start], findings) if start else ""
                    after = self._cards_in(span[end:], findings) if end < len(span) else ""
                    return f"{before}{PLACEHOLDERS['card']}{after}"
        return span

    def redact_value(self, value: Any, findings: Findings) -> Any:
        """Every string, dictionary key and PII-shaped number in a JSON-like value, redacted.

        Nothing is skipped for the key it sits under: a `name` or an `id` is text like any other.
        """
        if isinstance(value, str):
            if value in self._plain:
                return value
            if value.startswith("data:"):
                return "[DATA]"  # inline images and audio: not text, and never sent on
            return self._redact_string(value, findings)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, str) and key not in self._plain:
                    key = self._redact_string(key, findings)
                    if key in out:  # two keys redacted to one placeholder: keep both values
                        key = _unique_key(key, out)
                out[key] = self.redact_value(item, findings)
            return out
        if isinstance(value, list):
            return [self.redact_value(item, findings) for item in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self.redact_number(value, findings)
        return value

    def _redact_string(self, text: str, findings: Findings) -> str:
        # Short strings recur in every event (model names, metadata keys, categories): the
        # ones found clean once are remembered, in a set that is emptied when full.
        if text in self._clean:
            return text
        redacted = self.redact_into(text, findings)
        if len(text) <= _CLEAN_CHARS and redacted == text:
            if len(self._clean) >= _CLEAN_SIZE:
                self._clean.clear()
            self._clean.add(text)
        return redacted

    def redact_number(self, value: float, findings: Findings) -> float | str:
        """A number of PII shape (a card or North American phone number) as its placeholder."""
        if -SMALLEST_PII < value < SMALLEST_PII:
            return value  # almost every number: one comparison
        if isinstance(value, float) and (not value.is_integer() or abs(value) >= 1e20):
            return value
        digits = str(abs(int(value)))
        category = number_category(digits)
        if category is None or self._allowed(digits):
            return value
        self._count(category, findings)
        return PLACEHOLDERS[category]

    def redact_messages(
        self, messages: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Findings]:
        """Chat messages with every content string (text parts, tool arguments) redacted."""
        findings: Findings = {}
        return [self.redact_value(message, findings) for message in messages], findings
