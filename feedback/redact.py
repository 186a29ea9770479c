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
    "date_of_birth": "[DOB]",
    "ip_address": "[IP]",
    "api_key": "[API_KEY]",
    "token": "[TOKEN]",
    "secret": "[SECRET]",
}
# Strings that are OpenAI field names and enum values: no rule can match them, so walking a
# message skips the regex passes for them. A value is kept because of what it is, never
# because of the key it sits under.
_PLAIN = frozenset(
    {
        "role", "content", "name", "type", "id", "text", "refusal", "tool_calls",
        "tool_call_id", "function", "arguments", "system", "user", "assistant", "tool",
        "developer", "image_url", "url", "detail", "auto", "low", "high", "input_audio",
        "data", "format", "wav", "mp3", "file", "file_id", "filename", "file_data",
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stream",
        "stream_options", "include_usage", "stop", "seed", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "json_object", "json_schema", "schema",
        "strict", "logprobs", "top_logprobs", "logit_bias", "presence_penalty",
        "frequency_penalty", "parameters", "description", "properties", "required",
        "object", "string", "integer", "number", "boolean", "array", "items", "enum",
        "none", "metadata", "store", "modalities", "audio", "reasoning_effort",
        "service_tier", "prediction", "best_of", "echo", "suffix", "top_k", "min_p",
        "repetition_penalty", "ignore_eos", "stop_token_ids",
    }
)  # fmt: skip


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


def _contact_digits_ok(text: str) -> bool:
    # After a keyword such as `Tel.`, a short local number counts too.
    count = sum(char.isdigit() for char in text)
    return 6 <= count <= 15


def _two_digits(text: str) -> bool:
    return sum(char.isdigit() for char in text) >= 2


def tax_id_ok(text: str) -> bool:
    """True for a German tax id (Steuer-ID): 11 digits, no leading 0, ISO 7064 check digit."""
    digits = [ord(char) - 48 for char in text if char.isdigit()]
    if len(digits) != 11 or digits[0] == 0:
        return False
    product = 10
    for digit in digits[:10]:
        total = (digit + product) % 10 or 10
        product = total * 2 % 11
    return (11 - product) % 10 == digits[10]


def nanp_ok(digits: str) -> bool:
    """True when a digit string is a North American number: [1] NXX NXX XXXX."""
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return len(digits) == 10 and digits[0] not in "01" and digits[3] not in "01"


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
        r"|0[1-9](?:[ .-]?\d\d){4}(?![ .-]?\d)"  # French national: 01 23 45 67 89
        r"|\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4}"
        r"|0\d{1,4}[ /-]\d{4,8}"  # trunk prefix and area code, then the line: 030 1234567
        r"|1?[2-9]\d\d[2-9]\d{6}"  # bare North American number: area code, exchange, line
        r")(?![\w])",
        _digit_count_ok,
    ),
)
# Runs of digits and separators long enough to hold any shape above: the cheap prefilter.
_DIGIT_CLUSTER = re.compile(r"[\d(+][\d .()+-]{5,}\d")
# Either case: people type IBANs in lowercase too; the mod-97 check keeps words out.
_IBAN_HINT = re.compile(r"[A-Za-z]{2}\d\d")
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?"
    r"(?![A-Za-z0-9])"
)

# Shapes that are personal only next to a word that says so. Each keyword starts with one of
# its rule's triggers: str.find locates a trigger in the lowercased text, and the rule is
# matched only there (a scan of the whole text by a case-insensitive alternation costs ~50x).
_FILLER = (
    r"(?:[\s:#.,/=-]|n[or]\b|n°|num(?:ber|mer|éro)?\b"
    r"|is\b|was\b|id\b|on\b|in\b|am\b|le\b|el\b|at\b)*"
)
_MONTH = (
    r"(?:jan(?:uary|uar)?|feb(?:ruary|ruar)?|m(?:arch|ar|ärz|aerz)|apr(?:il)?|ma[iy]"
    r"|jun[ei]?|jul[yi]?|aug(?:ust)?|sep(?:t(?:ember)?)?|o[ck]t(?:ober)?|nov(?:ember)?"
    r"|de[cz](?:ember)?)\.?"
)
_DATE = (
    r"\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d\d)(?!\d)"
    r"|\d{4}[./-]\d{1,2}[./-]\d{1,2}(?!\d)"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\.?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}(?!\d)"
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}(?!\d)"
    r"|(?:19|20)\d\d(?!\d)"
)


@dataclass(frozen=True, slots=True)
class _KeywordRule:
    triggers: tuple[str, ...]  # lowercase prefixes: every keyword starts with one
    category: str
    pattern: re.Pattern[str]  # group "value" is what gets replaced
    check: Callable[[str], bool] | None = None


def _keyword_rule(
    triggers: tuple[str, ...],
    category: str,
    words: str,
    value: str,
    check: Callable[[str], bool] | None = None,
) -> _KeywordRule:
    pattern = re.compile(rf"(?i)(?<!\w)(?:{words}){_FILLER}(?P<value>{value})")
    return _KeywordRule(triggers, category, pattern, check)


_KEYWORD_RULES = (
    _keyword_rule(
        ("born", "dob", "d.o.b", "birth", "date", "geb", "né", "fecha", "nacid"),
        "date_of_birth",
        r"born|dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|birthday|geboren|geb\."
        r"|geburtsdatum|geburtstag|né|née|date\s+de\s+naissance|fecha\s+de\s+nacimiento"
        r"|nacid[oa]",
        _DATE,
    ),
    _keyword_rule(
        ("pass", "reisepass", "pasaporte"),
        "national_id",
        r"passport|reisepass|passnummer|pass-?nr\.?|passeport|pasaporte",
        r"(?<![A-Za-z0-9])[A-Za-z0-9]{6,9}(?![A-Za-z0-9])",
        _two_digits,
    ),
    _keyword_rule(
        ("steuer", "idnr", "tax", "tin"),
        "national_id",
        r"steuer-?id(?:entifikationsnummer)?|steuer-?idnr\.?|steuerliche\s+identifikationsnummer"
        r"|idnr\.?|tax\s*id|taxpayer\s+id|tin",
        r"\d{2}[ ]?\d{3}[ ]?\d{3}[ ]?\d{3}(?!\d)",
        tax_id_ok,
    ),
    _keyword_rule(
        ("tel", "tél", "phone", "mobil", "handy", "cell", "fax", "whatsapp", "call"),
        "phone",
        r"tel|tel\.|telephone|telefon|teléfono|téléphone|phone|mobile?|handy|cell(?:phone)?"
        r"|fax|whatsapp|call\s+me",
        r"\+?\(?\d[\d ()./-]{4,18}\d(?![\d])",
        _contact_digits_ok,
    ),
)
_RULE_BY_TRIGGER = {trigger: rule for rule in _KEYWORD_RULES for trigger in rule.triggers}
_TRIGGER = re.compile("|".join(re.escape(t) for t in sorted(_RULE_BY_TRIGGER, key=len)[::-1]))
_KEYWORD_REACH = 48  # keyword and filler before the value: "steuerliche identifikationsnummer: "

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


_CLEAN_CHARS, _CLEAN_SIZE = 64, 4096  # the clean-string memory: at most ~0.5 MB
_SMALLEST_PII = 10**9  # a 10-digit phone number is the shortest number redacted


def _number_category(digits: str) -> str | None:
    # Cards need an issuer's leading digit (2-6) besides Luhn, so that millisecond timestamps
    # and other long counters are not taken for cards one time in ten.
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits):
        return "card"
    if nanp_ok(digits):
        return "phone"
    return None


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
        self._digits = _alternation(_DIGIT_RULES)
        self._rules = {rule.name: rule for rule in _DIGIT_RULES}
        # Standalone forms, to re-test a span whose first-choice rule failed its check.
        self._standalone = {rule.name: re.compile(rule.pattern) for rule in _DIGIT_RULES}
        self._extra = [
            (category, re.compile(pattern), f"[{category.upper()}]")
            for category, pattern in (patterns or {}).items()
        ]
        self._allow = re.compile("|".join(f"(?:{a})" for a in allow)) if allow else None
        # Extra patterns could match anything, even an enum value: then every string is scanned.
        self._plain = frozenset() if self._extra else _PLAIN
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
        for triggers, category, pattern in _KEY_RULES:
            for trigger in triggers:  # a plain loop: no generator per rule on a hot path
                if trigger in text:
                    replace = self._replacer(category, PLACEHOLDERS[category], findings)
                    text = pattern.sub(replace, text)
                    break
        if "=" in text or ":" in text:
            text = self._redact_assignments(text, findings)
        if "@" in text:
            text = _EMAIL.sub(self._replacer("email", PLACEHOLDERS["email"], findings), text)
        if text.count(":") >= 2:
            text = _IPV6.sub(lambda m: self._replace_ipv6(m, findings), text)
        # Every shape below holds a digit: one scan for the first spares the text the others,
        # and the keyword and IBAN passes start just before it.
        digit = _DIGIT.search(text)
        if digit is not None:
            first = digit.start()
            text = self._redact_keyword_rules(text, first, findings)
            text = self._redact_ibans(text, first, findings)
            if _DIGIT_CLUSTER.search(text):
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

    def _redact_keyword_rules(self, text: str, first_digit: int, findings: Findings) -> str:
        # A value starts with a digit soon after its keyword: no keyword can matter before
        # the first digit's reach.
        begin = max(0, first_digit - _KEYWORD_REACH)
        lower = text[begin:].lower()
        if len(lower) != len(text) - begin:  # a few characters lowercase to two
            lower = "".join(char.lower()[:1] for char in text[begin:])
        spans: list[tuple[int, int, str]] = []
        for trigger in _TRIGGER.finditer(lower):
            rule = _RULE_BY_TRIGGER[trigger.group()]
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
        hint = _IBAN_HINT.search(text, max(0, first_digit - 2))
        if hint is None:
            return text
        out: list[str] = []
        last = 0
        for match in _IBAN.finditer(text, hint.start()):
            out += (text[last : match.start()], self._replace_iban(match, findings))
            last = match.end()
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
        if -_SMALLEST_PII < value < _SMALLEST_PII:
            return value  # almost every number: one comparison
        if isinstance(value, float) and (not value.is_integer() or abs(value) >= 1e20):
            return value
        digits = str(abs(int(value)))
        category = _number_category(digits)
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
