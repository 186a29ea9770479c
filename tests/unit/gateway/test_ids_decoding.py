"""gateway.ids decodes as it did with a regex and base64.urlsafe_b64decode, only cheaper."""

from __future__ import annotations

import base64
import binascii
import re

import pytest

from gateway.ids import BadResponseIdSignature, MalformedResponseId, ResponseIdSigner, _b64d

_OLD_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
_OLD_VALUE = {c: v for v, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)}  # fmt: skip


def _old(text: str) -> bytes | str:
    """The decoding before: bytes, or the error's message."""
    if not _OLD_ALPHABET.fullmatch(text):
        return "response id is not base64url"
    unused = {2: 0b1111, 3: 0b11}.get(len(text) % 4, 0)
    if unused and _OLD_VALUE[text[-1]] & unused:
        return "response id is not canonical base64url"
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return "response id is not base64url"


CASES = [
    "", "A", "AA", "AB", "AQ", "AAA", "AAB", "AAE", "AAAA", "AAAAA", "AA==", "A=A", "A A",
    "é", "AAé", "AA\n", "+/", "-_", "_-8", "/w", "_w", "_x", "aGVsbG8", "aGVsbG9", "aGVsbG8h",
    base64.urlsafe_b64encode(bytes(range(256))).rstrip(b"=").decode(),
]  # fmt: skip


@pytest.mark.parametrize("text", CASES)
def test_decoding_is_unchanged(text: str) -> None:
    try:
        got: bytes | str = _b64d(text)
    except MalformedResponseId as err:
        got = err.message
    assert got == _old(text)


def test_a_non_ascii_payload_is_a_bad_signature_not_a_crash() -> None:
    signer = ResponseIdSigner([b"k" * 32])
    with pytest.raises(BadResponseIdSignature):
        signer.verify("lg1.é.AAAAAAAAAAAAAAAAAAAAAA", now=0, max_age=60)
