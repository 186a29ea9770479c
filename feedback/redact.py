"""Redaction: text -> (redacted text, findings by category), before anything leaves (pure)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feedback.config import RedactionConfig

Findings = dict[str, int]

# Placeholder for each built-in category.
PLACEHOLDERS: dict[str, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "national_id": "[NATIONAL_ID]",
    "iban": "[IBAN]",
    "ip_address": "[IP]",
    "api_key": "[API_KEY]",
    "token": "[TOKEN]",
    "secret": "[SECRET]",
}
# Message keys whose string values are structure, not content.
_STRUCTURAL_KEYS = frozenset({"role", "type", "name", "id", "tool_call_id", "detail", "format"})


def luhn_ok(digits: str) -> bool:
    """True when a digit string passes the Luhn check (as every card number does)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index & 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """True when text (spaces allowed) is an IBAN with a valid mod-97 checksum."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in moved)
    return int(number) % 97 == 1


def _ipv6_ok(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _digit_count_ok(text: str) -> bool:
    count = sum(char.isdigit() for char in text)
    return 9 <= count <= 15


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str  # regex group name
    category: str
    pattern: str
    check: Callable[[str], bool] | None = None


# Vendor keys and tokens: each has a distinctive literal, so a substring test gates its regex.
_KEY_RULES: tuple[tuple[tuple[str, ...], str, re.Pattern[str]], ...] = (
    (
        ("-----BEGIN",),
        "secret",
        re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?-----END[A-Z ]*PRIVATE KEY-----"),
    ),
    (("eyJ",), "token", re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    (("earer ",), "token", re.compile(r"(?<=[Bb]earer )[A-Za-z0-9._~+/-]{16,}=*")),
    (("sk-",), "api_key", re.compile(r"sk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}")),
    (("k_live_", "k_test_"), "api_key", re.compile(r"[rs]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    (
        ("AKIA", "ASIA"),
        "api_key",
        re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    ),
    (
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        "api_key",
        re.compile(r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"),
    ),
    (("xox",), "api_key", re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}")),
    (("AIza",), "api_key", re.compile(r"AIza[0-9A-Za-z_-]{35}")),
)

# Shapes made of digits, tried only inside digit clusters; ordered so the more specific wins.
_DIGIT_RULES = (
    # A whole run of digit groups: the card inside it is found by windows (_replace_card).
    _Rule("card", "card", r"(?<![\d.-])\d(?:[ -]?\d){12,}(?![ -]?\d)"),
    _Rule(
        "ssn",
        "national_id",
        r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])",
    ),
    _Rule(
        "ipv4",
        "ip_address",
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)",
    ),
    _Rule(
        "phone",
        "phone",
        r"(?<![\w+])(?:"
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
        r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
        r"|\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4}"
        r")(?![\w])",
        _digit_count_ok,
    ),
)
# Runs of digits and separators long enough to hold any shape above: the cheap prefilter.
_DIGIT_CLUSTER = re.compile(r"[\d(+][\d .()+-]{5,}\d")
_IBAN_HINT = re.compile(r"[A-Z]{2}\d\d")
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]{2,39}(?![\w:])")
# `password = value`: keywords are found with str.find, then the value is matched after them.
_SECRET_KEYWORDS = (
    "secret",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "token",
    "api_key",
    "api-key",
    "apikey",
    "private_key",
    "access_key",
)
_ASSIGNED_VALUE = re.compile(r"""["']?\s*[:=]\s*["']?([^\s"'`,;\[]{4,})""")
# IBANs and every digit shape need a digit: one scan for it spares the text two others.
_DIGIT = re.compile(r"\d")


def _alternation(rules: Sequence[_Rule]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{rule.name}>{rule.pattern})" for rule in rules))


class Redactor:
    """Finds personal data and secrets in text and replaces them with `[CATEGORY]`."""

    def __init__(
        self, patterns: Mapping[str, str] | None = None, allow: Sequence[str] = ()
    ) -> None:
        self._digits = _alternation(_DIGIT_RULES)
        self._rules = {rule.name: rule for rule in _DIGIT_RULES}
        # Standalone forms, to re-test a span whose first-choice rule failed its check.
        self._standalone = {rule.name: re.compile(rule.pattern) for rule in _DIGIT_RULES}
        self._extra = [
            (category, re.compile(pattern), f"[{category.upper()}]")
            for category, pattern in (patterns or {}).items()
        ]
        self._allow = re.compile("|".join(f"(?:{a})" for a in allow)) if allow else None

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
        for triggers, category, pattern in _KEY_RULES:
            for trigger in triggers:  # a plain loop: no generator per rule on a hot path
                if trigger in text:
                    replace = self._replacer(category, PLACEHOLDERS[category], findings)
                    text = pattern.sub(replace, text)
                    break
        has_digit = _DIGIT.search(text) is not None
        if "=" in text or ":" in text:
            text = self._redact_assignments(text, findings)
        if "@" in text:
            text = _EMAIL.sub(self._replacer("email", PLACEHOLDERS["email"], findings), text)
        if text.count(":") >= 2:
            text = _IPV6.sub(lambda m: self._replace_ipv6(m, findings), text)
        if has_digit and _IBAN_HINT.search(text):
            text = _IBAN.sub(lambda m: self._replace_iban(m, findings), text)
        if has_digit and _DIGIT_CLUSTER.search(text):
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
        for keyword in _SECRET_KEYWORDS:
            index = lower.find(keyword)
            while index >= 0:
                match = _ASSIGNED_VALUE.match(text, index + len(keyword))
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

    def _replace_ipv6(self, match: re.Match[str], findings: Findings) -> str:
        span = match.group(0)
        # Three groups at least: `a::b` in code is an address in form only.
        groups = sum(1 for group in span.split(":") if group)
        if groups < 3 or not _ipv6_ok(span) or self._allowed(span):
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
        for cluster in _DIGIT_CLUSTER.finditer(text):
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
        names = [rule.name for rule in _DIGIT_RULES]
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
        """Redact every content string in a JSON-like value (messages, tool calls, params)."""
        if isinstance(value, str):
            if value.startswith("data:"):
                return "[DATA]"  # inline images and audio: not text, and never sent on
            return self.redact_into(value, findings)
        if isinstance(value, list):
            return [self.redact_value(item, findings) for item in value]
        if isinstance(value, dict):
            return {
                key: item
                if key in _STRUCTURAL_KEYS and isinstance(item, str)
                else self.redact_value(item, findings)
                for key, item in value.items()
            }
        return value

    def redact_messages(
        self, messages: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Findings]:
        """Chat messages with every content string (text parts, tool arguments) redacted."""
        findings: Findings = {}
        return [self.redact_value(message, findings) for message in messages], findings
