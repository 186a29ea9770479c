"""Signed response ids `lg1.<payload>.<mac>`: feedback needs nothing but the id (pure)."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from feedback.config import IdsConfig
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

PREFIX = "lg1"
MAC_BYTES = 16  # 128-bit tag: forgery stays out of reach and the id stays short
MAX_ID_CHARS = 2048  # refuse absurd inputs before decoding anything
CLOCK_SKEW_S = 300  # replicas' clocks may disagree this much
# Ids whose MAC and claims were checked, kept per signer: one answer is often judged more
# than once (a thumb, then an edit; a batch replayed). ~0.7 KB an entry: ~3 MB when full.
VERIFIED_CACHE = 4096
_NONCE_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# Each alphabet byte's 6-bit value (other bytes never get this far).
_B64_VALUE = bytes(_B64_CHARS.find(bytes([b])) % 64 for b in range(256))
# Unpadded length mod 4 -> the last character's bits that hold no data (2 bytes: 4, 1 byte: 2).
_UNUSED_BITS = {2: 0b1111, 3: 0b11}


class ResponseIdError(GatewayError):
    """The response id cannot be used for feedback."""

    status, type, code = 400, "invalid_request_error", "invalid_response_id"


class MalformedResponseId(ResponseIdError):
    """Not an `lg1.` id, or its parts do not decode."""


class BadResponseIdSignature(ResponseIdError):
    """No configured key produced this MAC: forged, tampered or signed elsewhere."""


class ExpiredResponseId(ResponseIdError):
    """Older than the accepted age (or dated in the future beyond clock skew)."""

    code = "response_id_expired"


@dataclass(frozen=True, slots=True)
class Claims:
    """What a response id says: which flag, variant and app produced the answer, and when."""

    flag: str | None
    variant: str | None
    flag_version: int | None
    app: str
    unit: str  # unit_hash(...) of the unit id, never the id itself
    time: int  # unix seconds
    nonce: str  # upstream id suffix or random: makes every id unique
    # A shadow answer's id carries its primary's nonce: a signed pair, which no app can forge.
    pair: str | None = None


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    """Decode unpadded base64url, refusing every spelling but the canonical one.

    A last character carries unused low bits (4 of them after 2 bytes, 2 after 1): decoders
    ignore them, so up to 16 spellings would decode to the same bytes. Only the spelling that
    encoding gives back is an id; anything else would be a second name for one answer.
    Checked with bytes.translate, not a regex: this runs twice for every piece of feedback.
    """
    raw = text.encode("ascii", "replace")  # not ASCII: "?", which no alphabet holds
    if not raw or raw.translate(None, _B64_CHARS):
        raise MalformedResponseId("response id is not base64url", param="response_id")
    # The bits a last character carries beyond the bytes must be 0, as encoding leaves them.
    unused = _UNUSED_BITS.get(len(raw) % 4, 0)
    if unused and _B64_VALUE[raw[-1]] & unused:
        raise MalformedResponseId("response id is not canonical base64url", param="response_id")
    try:  # what base64.urlsafe_b64decode does, minus its argument checks
        return binascii.a2b_base64(raw.translate(_TO_STANDARD) + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedResponseId("response id is not base64url", param="response_id") from exc


def new_nonce(upstream_id: str | None = None) -> str:
    """A nonce for Claims: the upstream id's last 16 safe characters, else 64 random bits."""
    if upstream_id:
        tail = _NONCE_CHARS.sub("", upstream_id)[-16:]
        if len(tail) >= 8:
            return tail
    return secrets.token_urlsafe(8)


def unit_hash(unit_id: str, key: bytes) -> str:
    """Keyed hash of a unit id (32 hex chars): stable per key, reveals nothing without it."""
    return hmac.digest(key, unit_id.encode(), "sha256")[:16].hex()


class ResponseIdSigner:
    """Signs with the first key and verifies with any, so keys can be rotated.

    The keys are fixed for the signer's life (a key retired from the config is a new
    signer), so an id it verified once stays verified: those are remembered (at most
    `cache_size`, oldest forgotten first) and only their age is checked again at each use.
    """

    def __init__(
        self, keys: list[bytes], unit_key: bytes | None = None, cache_size: int = VERIFIED_CACHE
    ) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = tuple(keys)
        # Keyed HMAC states, copied per use: the key's setup is done once, not per id.
        self._macs = tuple(hmac.new(key, digestmod="sha256") for key in keys)
        self._unit_key = unit_key or hmac.digest(keys[0], b"loopgate unit hash", "sha256")
        # OrderedDict: forgetting the oldest is O(1); a dict's next(iter()) would scan the
        # slots its earlier deletions left at the front (~2 us an insert when full).
        self._verified: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size

    @property
    def remembered(self) -> int:
        """How many verified ids are remembered now."""
        return len(self._verified)

    def unit_hash(self, unit_id: str) -> str:
        """The unit hash that goes into ids and events."""
        return unit_hash(unit_id, self._unit_key)

    def sign(self, claims: Claims) -> str:
        """The `lg1.<payload>.<mac>` id for these claims."""
        fields: dict[str, Any] = {
            "f": claims.flag,
            "v": claims.variant,
            "fv": claims.flag_version,
            "a": claims.app,
            "u": claims.unit,
            "t": claims.time,
            "n": claims.nonce,
        }
        if claims.pair is not None:  # only shadow ids: a primary's id is unchanged
            fields["p"] = claims.pair
        payload = _b64e(orjson.dumps(fields))
        signed = f"{PREFIX}.{payload}"
        mac = hmac.digest(self._keys[0], signed.encode("ascii"), "sha256")[:MAC_BYTES]
        return f"{signed}.{_b64e(mac)}"

    def verify(self, response_id: str, now: float, max_age: float) -> Claims:
        """Claims of a valid id; raises a ResponseIdError subclass saying what is wrong."""
        claims = self._verified.get(response_id)
        known = claims is not None
        if claims is None:
            claims = self._signed_claims(response_id)
        if claims.time > now + CLOCK_SKEW_S:
            raise ExpiredResponseId("response id is dated in the future", param="response_id")
        if now - claims.time > max_age:
            raise ExpiredResponseId(
                f"response id is older than {max_age:.0f}s", param="response_id"
            )
        if not known and self._cache_size:  # only ids that passed every check are kept
            cache = self._verified
            if len(cache) >= self._cache_size:
                cache.popitem(last=False)
            cache[response_id] = claims
        return claims

    def _signed_claims(self, response_id: str) -> Claims:
        """The claims of an id whose MAC one of the keys made; its age is not checked."""
        if len(response_id) > MAX_ID_CHARS:
            raise MalformedResponseId("response id is too long", param="response_id")
        parts = response_id.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
            raise MalformedResponseId(
                "response id is not a Loopgate id (lg1.<payload>.<mac>)", param="response_id"
            )
        mac = _b64d(parts[2])
        # Not ASCII: "?" in its place, so no MAC matches (ids are ASCII), rather than a 500.
        signed = f"{PREFIX}.{parts[1]}".encode("ascii", "replace")
        # The MAC is checked before the payload is parsed: nothing unsigned gets decoded.
        for keyed in self._macs:
            state = keyed.copy()
            state.update(signed)
            if hmac.compare_digest(state.digest()[:MAC_BYTES], mac):
                break
        else:
            raise BadResponseIdSignature(
                "response id signature does not verify", param="response_id"
            )
        return _claims(_b64d(parts[1]))


def _claims(raw: bytes) -> Claims:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponseId("response id payload is not JSON", param="response_id") from exc
    if not isinstance(data, dict):
        raise MalformedResponseId("response id payload is not an object", param="response_id")
    flag, variant, version = data.get("f"), data.get("v"), data.get("fv")
    app, unit, time, nonce = data.get("a"), data.get("u"), data.get("t"), data.get("n")
    pair = data.get("p")
    # orjson gives exact types: `type(x) is int` also keeps bools out.
    if not (
        (flag is None or type(flag) is str)
        and (variant is None or type(variant) is str)
        and (version is None or type(version) is int)
        and type(app) is str
        and type(unit) is str
        and type(time) is int
        and type(nonce) is str
        and (pair is None or type(pair) is str)
    ):
        raise MalformedResponseId("response id payload has wrong fields", param="response_id")
    return Claims(flag, variant, version, app, unit, time, nonce, pair)


def signer_from_config(config: IdsConfig) -> ResponseIdSigner:
    """The signer for these settings; without keys a random per-process key, with a warning."""
    keys = [key.get_secret_value().encode() for key in config.keys]
    if not keys:
        if config.require_keys:
            raise ValueError("ids.keys is empty and ids.require_keys is set: configure a key")
        log.warning(
            "ids.keys is not configured: signing response ids with a random per-process key; "
            "ids from other replicas or earlier runs will not verify (set LOOPGATE_IDS__KEYS)"
        )
        keys = [secrets.token_bytes(32)]
    unit_key = config.unit_key.get_secret_value().encode() if config.unit_key else None
    return ResponseIdSigner(keys, unit_key)
