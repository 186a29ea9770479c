"""Signed response ids: sign, verify, tamper, expiry, rotation."""

from __future__ import annotations

import base64
import hmac

import orjson
import pytest

from feedback.config import IdsConfig
from gateway.ids import (
    BadResponseIdSignature,
    Claims,
    ExpiredResponseId,
    MalformedResponseId,
    ResponseIdSigner,
    new_nonce,
    signer_from_config,
    unit_hash,
)

KEY_A = b"a" * 32
KEY_B = b"b" * 32
NOW = 1_700_000_000


def claims(**changes: object) -> Claims:
    base: dict[str, object] = {
        "flag": "support-bot",
        "variant": "canary",
        "flag_version": 7,
        "app": "app-1",
        "unit": unit_hash("user-42", KEY_A),
        "time": NOW,
        "nonce": new_nonce(),
    }
    base.update(changes)
    return Claims(**base)  # type: ignore[arg-type]


def test_round_trip() -> None:
    signer = ResponseIdSigner([KEY_A])
    original = claims()
    rid = signer.sign(original)
    assert rid.startswith("lg1.")
    assert rid.count(".") == 2
    assert signer.verify(rid, now=NOW + 10, max_age=3600) == original


def test_no_flag_round_trip() -> None:
    signer = ResponseIdSigner([KEY_A])
    original = claims(flag=None, variant=None, flag_version=None)
    assert signer.verify(signer.sign(original), now=NOW, max_age=60) == original


def test_ids_are_unique() -> None:
    signer = ResponseIdSigner([KEY_A])
    assert len({signer.sign(claims()) for _ in range(1000)}) == 1000


def test_upstream_nonce() -> None:
    assert new_nonce("chatcmpl-0123456789abcdef0123") == "456789abcdef0123"
    assert len(new_nonce("x")) >= 8  # too short to be unique: random instead


@pytest.mark.parametrize(
    "mangle",
    [
        lambda rid: rid.replace("lg1.", "lg2.", 1),
        lambda rid: rid + ".x",
        lambda rid: rid.split(".", 1)[1],
        lambda rid: "lg1..",
        lambda rid: "lg1.@@@.@@@",
        lambda rid: "",
        lambda rid: "lg1." + "A" * 5000 + ".x",
    ],
)
def test_malformed(mangle: object) -> None:
    signer = ResponseIdSigner([KEY_A])
    with pytest.raises(MalformedResponseId):
        signer.verify(mangle(signer.sign(claims())), now=NOW, max_age=60)  # type: ignore[operator]


def test_tampered_payload_is_refused() -> None:
    signer = ResponseIdSigner([KEY_A])
    prefix, payload, mac = signer.sign(claims()).split(".")
    data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["v"] = "control"  # claim the answer came from another variant
    forged = base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()
    with pytest.raises(BadResponseIdSignature):
        signer.verify(f"{prefix}.{forged}.{mac}", now=NOW, max_age=60)


def test_tampered_mac_is_refused() -> None:
    signer = ResponseIdSigner([KEY_A])
    rid = signer.sign(claims())
    flipped = rid[:-2] + ("A" if rid[-2] != "A" else "B") + rid[-1]
    with pytest.raises(BadResponseIdSignature):
        signer.verify(flipped, now=NOW, max_age=60)


def test_other_key_is_refused() -> None:
    rid = ResponseIdSigner([KEY_B]).sign(claims())
    with pytest.raises(BadResponseIdSignature):
        ResponseIdSigner([KEY_A]).verify(rid, now=NOW, max_age=60)


def test_rotation_old_ids_still_verify() -> None:
    old = ResponseIdSigner([KEY_A]).sign(claims())
    rotated = ResponseIdSigner([KEY_B, KEY_A])
    assert rotated.verify(old, now=NOW, max_age=60).variant == "canary"
    new = rotated.sign(claims())
    # New ids are signed with the new key only.
    with pytest.raises(BadResponseIdSignature):
        ResponseIdSigner([KEY_A]).verify(new, now=NOW, max_age=60)
    assert ResponseIdSigner([KEY_B]).verify(new, now=NOW, max_age=60).app == "app-1"


def test_expired_and_future() -> None:
    signer = ResponseIdSigner([KEY_A])
    rid = signer.sign(claims())
    assert signer.verify(rid, now=NOW + 3600, max_age=3600).time == NOW
    with pytest.raises(ExpiredResponseId):
        signer.verify(rid, now=NOW + 3601, max_age=3600)
    with pytest.raises(ExpiredResponseId):
        signer.verify(rid, now=NOW - 3600, max_age=3600)


def test_errors_carry_openai_shape() -> None:
    error = ExpiredResponseId("too old", param="response_id")
    assert error.status == 400
    assert error.code == "response_id_expired"
    assert MalformedResponseId("x").code == "invalid_response_id"


def test_unit_hash_is_keyed_and_stable() -> None:
    assert unit_hash("user-42", KEY_A) == unit_hash("user-42", KEY_A)
    assert unit_hash("user-42", KEY_A) != unit_hash("user-42", KEY_B)
    assert "user-42" not in unit_hash("user-42", KEY_A)
    assert len(unit_hash("user-42", KEY_A)) == 32


def test_config_without_keys_generates_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    signer = signer_from_config(IdsConfig())
    assert "random per-process key" in caplog.text
    rid = signer.sign(claims())
    assert signer.verify(rid, now=NOW, max_age=60).flag == "support-bot"
    with pytest.raises(BadResponseIdSignature):
        signer_from_config(IdsConfig()).verify(rid, now=NOW, max_age=60)


def test_config_require_keys_refuses_generated() -> None:
    with pytest.raises(ValueError, match="require_keys"):
        signer_from_config(IdsConfig(require_keys=True))


def test_config_keys_rotate_and_unit_key_survives_rotation() -> None:
    k1, k2, unit = "1" * 32, "2" * 32, "u" * 32
    first = signer_from_config(IdsConfig(keys=[k1], unit_key=unit))  # type: ignore[list-item,arg-type]
    second = signer_from_config(IdsConfig(keys=[k2, k1], unit_key=unit))  # type: ignore[list-item,arg-type]
    assert first.unit_hash("u-1") == second.unit_hash("u-1")
    assert second.verify(first.sign(claims()), now=NOW, max_age=60).app == "app-1"


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        IdsConfig(keys=["short"])  # type: ignore[list-item]


def _respellings(part: str) -> list[str]:
    """Other spellings of a base64url part that decode to the same bytes (unused low bits)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    out = []
    for char in alphabet:
        other = part[:-1] + char
        if other != part and base64.urlsafe_b64decode(other + "=" * (-len(other) % 4)) == raw:
            out.append(other)
    return out


def test_respelled_ids_are_refused() -> None:
    signer = ResponseIdSigner([KEY_A])
    for _ in range(20):  # payloads of every length mod 3 over the runs
        rid = signer.sign(claims())
        prefix, payload, mac = rid.split(".")
        # A 16-byte MAC ends in a character with 4 unused bits: 15 other spellings decode alike.
        assert len(_respellings(mac)) == 15
        for other in _respellings(mac):
            with pytest.raises(MalformedResponseId, match="canonical"):
                signer.verify(f"{prefix}.{payload}.{other}", now=NOW, max_age=60)
        # The MAC covers the payload as spelled, so a re-spelled payload never verifies either.
        for other in _respellings(payload):
            with pytest.raises(BadResponseIdSignature):
                signer.verify(f"{prefix}.{other}.{mac}", now=NOW, max_age=60)
        assert signer.verify(rid, now=NOW, max_age=60).app == "app-1"


def test_a_shadow_id_carries_its_primary_nonce_and_a_primary_id_is_unchanged() -> None:
    signer = ResponseIdSigner([KEY_A])
    primary = claims()
    primary_id = signer.sign(primary)
    assert b'"p"' not in base64.urlsafe_b64decode(primary_id.split(".")[1] + "==")
    shadow = claims(variant="candidate", pair=primary.nonce)
    assert signer.verify(signer.sign(shadow), now=NOW, max_age=60) == shadow
    assert signer.verify(primary_id, now=NOW, max_age=60).pair is None


def test_a_pair_claim_of_the_wrong_type_is_malformed() -> None:
    fields = {"f": None, "v": None, "fv": None, "a": "a", "u": "u", "t": NOW, "n": "n", "p": 5}
    payload = base64.urlsafe_b64encode(orjson.dumps(fields)).rstrip(b"=")
    signed = b"lg1." + payload
    mac = base64.urlsafe_b64encode(hmac.digest(KEY_A, signed, "sha256")[:16]).rstrip(b"=")
    with pytest.raises(MalformedResponseId, match="wrong fields"):
        ResponseIdSigner([KEY_A]).verify((signed + b"." + mac).decode(), now=NOW, max_age=60)


def test_a_remembered_id_is_still_refused_once_expired() -> None:
    signer = ResponseIdSigner([KEY_A])
    rid = signer.sign(claims())
    assert signer.verify(rid, now=NOW + 10, max_age=3600).time == NOW  # now remembered
    with pytest.raises(ExpiredResponseId, match="older than 3600s"):
        signer.verify(rid, now=NOW + 3601, max_age=3600)
    with pytest.raises(ExpiredResponseId, match="older than 60s"):
        signer.verify(rid, now=NOW + 61, max_age=60)  # each caller's own max_age
    with pytest.raises(ExpiredResponseId, match="in the future"):
        signer.verify(rid, now=NOW - 301, max_age=3600)
    assert signer.verify(rid, now=NOW + 20, max_age=3600).time == NOW


def test_an_id_of_a_retired_key_is_refused_by_the_signer_without_it() -> None:
    old = ResponseIdSigner([KEY_A]).sign(claims())
    rotated = ResponseIdSigner([KEY_B, KEY_A])
    assert rotated.verify(old, now=NOW, max_age=60).app == "app-1"  # remembered by `rotated`
    retired = ResponseIdSigner([KEY_B])  # the config without KEY_A: a new signer
    for _ in range(2):
        with pytest.raises(BadResponseIdSignature):
            retired.verify(old, now=NOW, max_age=60)


def test_refused_ids_are_not_remembered_and_refused_again_alike() -> None:
    signer = ResponseIdSigner([KEY_A])
    rid = signer.sign(claims())
    flipped = rid[:-1] + ("A" if rid[-1] != "A" else "Q")
    for _ in range(2):
        with pytest.raises((BadResponseIdSignature, MalformedResponseId)):
            signer.verify(flipped, now=NOW, max_age=60)
        with pytest.raises(ExpiredResponseId):
            signer.verify(rid, now=NOW + 61, max_age=60)
    assert signer.remembered == 0


def test_remembered_ids_are_bounded_oldest_forgotten_first() -> None:
    signer = ResponseIdSigner([KEY_A], cache_size=3)
    ids = [signer.sign(claims()) for _ in range(5)]
    for rid in ids:
        assert signer.verify(rid, now=NOW, max_age=60).time == NOW
    assert signer.remembered == 3
    for rid in ids:  # forgotten or not, every id verifies the same
        assert signer.verify(rid, now=NOW, max_age=60).time == NOW
    assert signer.remembered == 3
    no_memory = ResponseIdSigner([KEY_A], cache_size=0)
    assert no_memory.verify(ids[0], now=NOW, max_age=60).time == NOW
    assert no_memory.remembered == 0
