"""What personal data and secrets look like: categories, checksums, patterns (pure data).

feedback/redact.py applies these; the tables live here so that the engine reads in one sitting.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

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
PLAIN = frozenset(
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


def ipv6_ok(text: str) -> bool:
    """True when text parses as an IPv6 address."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def digit_count_ok(text: str) -> bool:
    """True for 9 to 15 digits: a phone number's length, separators aside."""
    count = sum(char.isdigit() for char in text)
    return 9 <= count <= 15


def contact_digits_ok(text: str) -> bool:
    """True for 6 to 15 digits: after a word such as `Tel.`, a short local number counts."""
    count = sum(char.isdigit() for char in text)
    return 6 <= count <= 15


def two_digits(text: str) -> bool:
    """True when text holds at least two digits (a passport number, not a word)."""
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
class DigitRule:
    """A shape made of digits, tried inside digit clusters, with an optional check."""

    name: str  # regex group name
    category: str
    pattern: str
    check: Callable[[str], bool] | None = None


# Vendor keys and tokens: each has a distinctive literal, so a substring test gates its regex.
KEY_RULES: tuple[tuple[tuple[str, ...], str, re.Pattern[str]], ...] = (
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
DIGIT_RULES = (
    # A whole run of digit groups: the card inside it is found by windows (_replace_card).
    DigitRule("card", "card", r"(?<![\d.-])\d(?:[ -]?\d){12,}(?![ -]?\d)"),
    DigitRule(
        "ssn",
        "national_id",
        r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])",
    ),
    DigitRule(
        "ipv4",
        "ip_address",
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)",
    ),
    DigitRule(
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
        digit_count_ok,
    ),
)
# Runs of digits and separators long enough to hold any shape above: the cheap prefilter.
DIGIT_CLUSTER = re.compile(r"[\d(+][\d .()+-]{5,}\d")
# Either case: people type IBANs in lowercase too; the mod-97 check keeps words out.
IBAN_HINT = re.compile(r"[A-Za-z]{2}\d\d")
IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?"
    r"(?![A-Za-z0-9])"
)

# Shapes that are personal only next to a word that says so. Each keyword starts with one of
# its rule's triggers: str.find locates a trigger in the lowercased text, and the rule is
# matched only there (a scan of the whole text by a case-insensitive alternation costs ~50x).
FILLER = (
    r"(?:[\s:#.,/=-]|n[or]\b|n°|num(?:ber|mer|éro)?\b"
    r"|is\b|was\b|id\b|on\b|in\b|am\b|le\b|el\b|at\b)*"
)
MONTH = (
    r"(?:jan(?:uary|uar)?|feb(?:ruary|ruar)?|m(?:arch|ar|ärz|aerz)|apr(?:il)?|ma[iy]"
    r"|jun[ei]?|jul[yi]?|aug(?:ust)?|sep(?:t(?:ember)?)?|o[ck]t(?:ober)?|nov(?:ember)?"
    r"|de[cz](?:ember)?)\.?"
)
DATE = (
    r"\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d\d)(?!\d)"
    r"|\d{4}[./-]\d{1,2}[./-]\d{1,2}(?!\d)"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\.?\s+(?:of\s+)?{MONTH},?\s+\d{{4}}(?!\d)"
    rf"|{MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}(?!\d)"
    r"|(?:19|20)\d\d(?!\d)"
)


@dataclass(frozen=True, slots=True)
class KeywordRule:
    """A shape that is personal only right after a keyword (group `value` is replaced)."""

    triggers: tuple[str, ...]  # lowercase prefixes: every keyword starts with one
    category: str
    pattern: re.Pattern[str]  # group "value" is what gets replaced
    check: Callable[[str], bool] | None = None


def keyword_rule(
    triggers: tuple[str, ...],
    category: str,
    words: str,
    value: str,
    check: Callable[[str], bool] | None = None,
) -> KeywordRule:
    """A rule matching one of `words`, filler such as `: no.`, then the value."""
    pattern = re.compile(rf"(?i)(?<!\w)(?:{words}){FILLER}(?P<value>{value})")
    return KeywordRule(triggers, category, pattern, check)


KEYWORD_RULES = (
    keyword_rule(
        ("born", "dob", "d.o.b", "birth", "date", "geb", "né", "fecha", "nacid"),
        "date_of_birth",
        r"born|dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|birthday|geboren|geb\."
        r"|geburtsdatum|geburtstag|né|née|date\s+de\s+naissance|fecha\s+de\s+nacimiento"
        r"|nacid[oa]",
        DATE,
    ),
    keyword_rule(
        ("pass", "reisepass", "pasaporte"),
        "national_id",
        r"passport|reisepass|passnummer|pass-?nr\.?|passeport|pasaporte",
        r"(?<![A-Za-z0-9])[A-Za-z0-9]{6,9}(?![A-Za-z0-9])",
        two_digits,
    ),
    keyword_rule(
        ("steuer", "idnr", "tax", "tin"),
        "national_id",
        r"steuer-?id(?:entifikationsnummer)?|steuer-?idnr\.?|steuerliche\s+identifikationsnummer"
        r"|idnr\.?|tax\s*id|taxpayer\s+id|tin",
        r"\d{2}[ ]?\d{3}[ ]?\d{3}[ ]?\d{3}(?!\d)",
        tax_id_ok,
    ),
    keyword_rule(
        ("tel", "tél", "phone", "mobil", "handy", "cell", "fax", "whatsapp", "call"),
        "phone",
        r"tel|tel\.|telephone|telefon|teléfono|téléphone|phone|mobile?|handy|cell(?:phone)?"
        r"|fax|whatsapp|call\s+me",
        r"\+?\(?\d[\d ()./-]{4,18}\d(?![\d])",
        contact_digits_ok,
    ),
)
RULE_BY_TRIGGER = {trigger: rule for rule in KEYWORD_RULES for trigger in rule.triggers}
TRIGGER = re.compile("|".join(re.escape(t) for t in sorted(RULE_BY_TRIGGER, key=len)[::-1]))
KEYWORD_REACH = 48  # keyword and filler before the value: "steuerliche identifikationsnummer: "

EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]{2,39}(?![\w:])")
# `password = value`: keywords are found with str.find, then the value is matched after them.
SECRET_KEYWORDS = (
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
ASSIGNED_VALUE = re.compile(r"""["']?\s*[:=]\s*["']?([^\s"'`,;\[]{4,})""")
# IBANs and every digit shape need a digit: one scan for it spares the text two others.
DIGIT = re.compile(r"\d")


SMALLEST_PII = 10**9  # a 10-digit phone number is the shortest number redacted


def number_category(digits: str) -> str | None:
    """The category of a number's digits when it has PII shape (card or phone), else None.

    Cards need an issuer's leading digit (2-6) besides Luhn, so that millisecond timestamps
    and other long counters are not taken for cards one time in ten.
    """
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits):
        return "card"
    if nanp_ok(digits):
        return "phone"
    return None
