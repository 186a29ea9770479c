"""Redaction: a table of what is found and what is left alone; planted secrets never survive."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.redact import Redactor, iban_ok, luhn_ok, nanp_ok, tax_id_ok
from feedback.schema import ResponseContent
from feedback.scrub import scrub
from tests.unit.feedback.events import completion, feedback

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"

FOUND = [
    ("mail john.doe+x@example.co.uk now", "mail [EMAIL] now", "email"),
    ("card 4111 1111 1111 1111.", "card [CARD].", "card"),
    ("card 4111-1111-1111-1111", "card [CARD]", "card"),
    ("amex 378282246310005", "amex [CARD]", "card"),
    ("ref 12 4111 1111 1111 1111", "ref 12 [CARD]", "card"),
    ("0000 4000 0000 0000 0002", "0000 [CARD]", "card"),
    ("4111 1111 1111 1111 0000", "[CARD] 0000", "card"),
    ("4111 1111 1111 1111 5500 0000 0000 0004", "[CARD] [CARD]", "card"),
    ("call +1 (415) 555-2671", "call [PHONE]", "phone"),
    ("call 415-555-2671 or 415.555.2671", "call [PHONE] or [PHONE]", "phone"),
    ("uk +44 20 7946 0958", "uk [PHONE]", "phone"),
    ("ssn 123-45-6789", "ssn [NATIONAL_ID]", "national_id"),
    ("iban DE89 3704 0044 0532 0130 00", "iban [IBAN]", "iban"),
    ("iban de89 3704 0044 0532 0130 00", "iban [IBAN]", "iban"),
    ("iban gb82west12345698765432.", "iban [IBAN].", "iban"),
    # Phones in several countries' formats, bare US numbers, and after a keyword.
    ("Tel. 030 1234567", "Tel. [PHONE]", "phone"),
    ("Telefonnummer: 030/1234567", "Telefonnummer: [PHONE]", "phone"),
    ("mobil 0170 1234567", "mobil [PHONE]", "phone"),
    ("fr +33 1 23 45 67 89", "fr [PHONE]", "phone"),
    ("fr 01 23 45 67 89", "fr [PHONE]", "phone"),
    ("Téléphone : 01.23.45.67.89", "Téléphone : [PHONE]", "phone"),
    ("uk 020 7946 0958", "uk [PHONE]", "phone"),
    ("text 4155552671 now", "text [PHONE] now", "phone"),
    ("or 14155552671", "or [PHONE]", "phone"),
    ("call me at 555 1234 99", "call me at [PHONE]", "phone"),
    # Dates of birth next to a keyword.
    ("born 12.03.1985", "born [DOB]", "date_of_birth"),
    ("I was born on March 12, 1985 in Ohio", "I was born on [DOB] in Ohio", "date_of_birth"),
    ("DOB: 1985-03-12", "DOB: [DOB]", "date_of_birth"),
    ("date of birth 12th of March 1985", "date of birth [DOB]", "date_of_birth"),
    ("Date of birth: 12/03/85.", "Date of birth: [DOB].", "date_of_birth"),
    ("geboren am 12. März 1985", "geboren am [DOB]", "date_of_birth"),
    ("Geburtsdatum 12.03.1985", "Geburtsdatum [DOB]", "date_of_birth"),
    ("née le 3 mai 1990", "née le [DOB]", "date_of_birth"),
    ("born in 1985", "born in [DOB]", "date_of_birth"),
    # Passport numbers and the German tax id next to a keyword.
    ("passport C01X00T47", "passport [NATIONAL_ID]", "national_id"),
    ("my passport number is 123456789.", "my passport number is [NATIONAL_ID].", "national_id"),
    ("Reisepass-Nr. C01X00T47", "Reisepass-Nr. [NATIONAL_ID]", "national_id"),
    ("Steuer-ID: 86095742719", "Steuer-ID: [NATIONAL_ID]", "national_id"),
    ("Steuer-IdNr. 86 095 742 719", "Steuer-IdNr. [NATIONAL_ID]", "national_id"),
    ("tax id 86095742719", "tax id [NATIONAL_ID]", "national_id"),
    ("iban GB82WEST12345698765432", "iban [IBAN]", "iban"),
    ("from 192.168.1.20.", "from [IP].", "ip_address"),
    ("v6 2001:db8::8a2e:370:7334", "v6 [IP]", "ip_address"),
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456", "key [API_KEY]", "api_key"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [API_KEY]", "api_key"),
    ("gh ghp_" + "a1" * 18, "gh [API_KEY]", "api_key"),
    ("stripe sk_live_abcdefghijklmnop1234", "stripe [API_KEY]", "api_key"),
    ("slack xoxb-1234567890-abcdef", "slack [API_KEY]", "api_key"),
    ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer [TOKEN]", "token"),
    (f"jwt {JWT}", "jwt [TOKEN]", "token"),
    ("password=hunter22", "password=[SECRET]", "secret"),
    ('"api_key": "abcd1234efgh"', '"api_key": "[SECRET]"', "secret"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "aws_secret_access_key = [SECRET]", "secret"),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
        "[SECRET]",
        "secret",
    ),
]

LEFT_ALONE = [
    "The year 2024 had 365 days; pi is 3.14159 and 1,000,000 people.",
    "Dates like 2024-01-15 and times like 12:30:45 are fine.",
    "card-like 4111 1111 1111 1112 fails Luhn",
    "order 1234567890123 has no separators and fails Luhn",
    "bad iban DE00 3704 0044 0532 0130 00",
    "C++ std::vector<int> and a::b",
    "version 1.2.3 and sk-short",
    "my password is long and secret: no",
    "",
    # Ordinary numbers: prices, times, versions, counts, ids that are not anyone's.
    "It costs $1,299.99 (EUR 1.199,00) incl. 19% VAT, delivery 3-5 days.",
    "Meet at 10:30 or 14:45; the train leaves 07:05 from platform 12.",
    "Upgrade from 3.11.7 to 3.12.1 or build 20240115; python3.12 -m pip",
    "order 1234567890 ships with 2 of 3 parcels, tracking 0012345",  # 10 digits starting 1
    "There are 1234567 rows and 7654321 columns.",
    "hotel 1234567 and iPhone 15 Pro",
    "tell me about 2024",
    "the passport expires in 2030; passport photo 35x45",
    "tax id 86095742718 has a wrong check digit",
    "born to run, born 2 be wild",
    "ISO 8601: 2024-01-15T12:30:45Z, unix 1733155200",
    "de89 is not an iban, nor is ab12 cdef ghij",
]


@pytest.mark.parametrize(("text", "expected", "category"), FOUND)
def test_found(text: str, expected: str, category: str) -> None:
    redacted, findings = Redactor().redact(text)
    assert redacted == expected
    assert findings == {category: expected.count("[")}


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_left_alone(text: str) -> None:
    assert Redactor().redact(text) == (text, {})


def test_checksums() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00")
    assert iban_ok("de89 3704 0044 0532 0130 00")
    assert not iban_ok("DE88 3704 0044 0532 0130 00")
    assert tax_id_ok("86095742719")  # the Federal Central Tax Office's published example
    assert not tax_id_ok("86095742718")
    assert not tax_id_ok("06095742719")
    assert nanp_ok("4155552671")
    assert nanp_ok("14155552671")
    assert not nanp_ok("1234567890")
    assert not nanp_ok("4151552671")


def test_extra_patterns_and_allow_list() -> None:
    redactor = Redactor({"employee_id": r"EMP-\d{6}"}, allow=[r"support@acme\.com"])
    text = "ask support@acme.com or bob@acme.com about EMP-123456"
    assert redactor.redact(text) == (
        "ask support@acme.com or [EMAIL] about [EMPLOYEE_ID]",
        {"email": 1, "employee_id": 1},
    )


def test_messages_every_string_part() -> None:
    messages = [
        {"role": "user", "content": "mail a@b.io"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "call 415-555-2671"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"email": "c@d.io"}'},
                }
            ],
        },
    ]
    redacted, findings = Redactor().redact_messages(messages)
    assert redacted[0] == {"role": "user", "content": "mail [EMAIL]"}
    assert redacted[1]["content"][0]["text"] == "call [PHONE]"
    assert redacted[1]["content"][1]["image_url"]["url"] == "[DATA]"
    assert redacted[2]["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": '{"email": "[EMAIL]"}',
    }
    assert redacted[2]["tool_calls"][0]["id"] == "call_1"  # walked, and nothing in it
    assert findings == {"email": 2, "phone": 1}
    assert messages[0]["content"] == "mail a@b.io"  # the input is not modified


def test_scrub_completion_redacts_and_counts() -> None:
    event = completion(
        text="I am a@b.io", response=ResponseContent(text="your card 4111111111111111")
    )
    clean, found = scrub(event, Redactor())
    assert found == {"email": 1, "card": 1}
    assert clean.body.safety == {"email": 1, "card": 1}
    assert "a@b.io" not in clean.model_dump_json()
    assert "4111111111111111" not in clean.model_dump_json()
    assert "user" not in clean.body.request.params  # type: ignore[union-attr]
    assert clean.event_id == event.event_id


def test_consent_none_keeps_metadata_only() -> None:
    event = completion(text="secret plans", consent="none")
    clean, _ = scrub(event, Redactor())
    assert clean.body.response is None
    assert clean.body.request is not None
    assert clean.body.request.messages is None
    assert clean.body.request.params == {"temperature": 0.2}
    assert "secret plans" not in clean.model_dump_json()
    assert clean.body.usage == event.body.usage
    fb, _ = scrub(feedback(consent="none"), Redactor())
    assert (fb.body.edited_text, fb.body.comment) == (None, None)  # type: ignore[union-attr]
    assert fb.body.kind == "edit"  # type: ignore[union-attr]


# Secrets a user might paste, each with the exact text that must not survive.
def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        if luhn_ok(prefix + check):
            return prefix + check
    raise AssertionError("unreachable")


emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(string.ascii_lowercase + string.digits + "._+-", min_size=1, max_size=12).filter(
        lambda s: s[0].isalnum()
    ),
    st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10),
    st.sampled_from(["com", "io", "co", "org", "de"]),
)
cards = st.builds(
    lambda first, rest, sep: sep.join(
        (lambda n: [n[i : i + 4] for i in range(0, 16, 4)])(_luhn_complete(first + rest))
    ),
    st.sampled_from(["4", "5", "6"]),
    st.text(string.digits, min_size=14, max_size=14),
    st.sampled_from(["", " ", "-"]),
)
keys = st.one_of(
    st.text(string.ascii_letters + string.digits, min_size=32, max_size=48).map(
        lambda s: "sk-" + s
    ),
    st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16).map(
        lambda s: "AKIA" + s
    ),
    st.text(string.ascii_letters + string.digits, min_size=36, max_size=40).map(
        lambda s: "ghp_" + s
    ),
)
secrets_ = st.one_of(emails, cards, keys)
filler = st.text(string.ascii_letters + string.digits + " .,!?;:'()-@=", max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(filler, secrets_), min_size=1, max_size=4), filler)
def test_planted_secrets_never_survive(parts: list[tuple[str, str]], tail: str) -> None:
    text = " ".join(f"{before} {secret}" for before, secret in parts) + " " + tail
    redacted, findings = Redactor().redact(text)
    for _, secret in parts:
        assert secret not in redacted
        digits = secret.replace(" ", "").replace("-", "")
        if digits.isdigit():
            assert digits not in redacted.replace(" ", "").replace("-", "")
    assert findings


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(filler, secrets_), min_size=1, max_size=3))
def test_planted_secrets_never_reach_an_event(parts: list[tuple[str, str]]) -> None:
    text = " ".join(f"{before} {secret}" for before, secret in parts)
    event = completion(text=text, response=ResponseContent(text=text))
    clean, _ = scrub(event, Redactor())
    fb, _ = scrub(feedback(edited_text=text, comment=text, metadata={"note": text}), Redactor())
    for raw in (clean.model_dump_json(), fb.model_dump_json()):
        for _, secret in parts:
            assert secret not in raw
