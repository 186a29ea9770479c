"""Seal and open the content fields of an event with its unit's key: AES-256-GCM (pure).

A sealed event keeps every metadata field readable and its content fields empty (null, or
"" where the schema needs a string); `body.sealed` holds the ciphertext of those fields, the
key id and which fields it covers. The associated data binds the ciphertext to the event's
type, id and unit hash, so it cannot be moved onto another event. Forgetting a unit deletes
its key: its events then open with "[erased]" in place of every sealed field.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from feedback.privacy.keys import KeyReader, UnitKey
from feedback.truncation import fit_content

ALG = "A256GCM"
NONCE_BYTES = 12
ERASED = "[erased]"
# The content fields of each event type, as paths in its body; with the value a sealed
# event holds there instead.
CONTENT_FIELDS: dict[str, tuple[tuple[tuple[str, ...], Any], ...]] = {
    "completion": (
        (("request", "messages"), None),
        (("request", "prompt"), None),
        (("response", "text"), None),
        (("response", "tool_calls"), None),
        (("error", "message"), ""),  # upstream errors can echo the prompt back
    ),
    "feedback": ((("edited_text",), None), (("comment",), None)),
}


class SealError(ValueError):
    """A sealed event that does not open with its unit's key: tampered, or malformed."""


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise SealError("sealed content is not base64 text")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError("sealed content is not base64") from exc


def associated_data(event_type: str, event_id: object, unit_hash: str) -> bytes:
    """What the tag authenticates besides the content: which event, of which unit."""
    return f"loopgate-seal-v1\0{event_type}\0{event_id}\0{unit_hash}".encode()


def sealable(data: dict[str, Any]) -> str | None:
    """The unit hash to seal this event dict under, or None when it has nothing to seal."""
    if data.get("type") not in CONTENT_FIELDS:
        return None
    body = data.get("body")
    if not isinstance(body, dict) or body.get("sealed") or body.get("consent") == "none":
        return None
    unit = body.get("unit_hash")
    return unit if isinstance(unit, str) and unit else None


def seal_event(
    data: dict[str, Any], key: UnitKey, nonce: bytes, max_plain: int | None = None
) -> bool | str:
    """Encrypt the event dict's content fields in place; False when there was no content.

    Content over `max_plain` bytes is first cut to fit (feedback.truncation's marker and
    original sizes), since a sealed event can no longer be cut by the Kafka sink: then the
    answer is "truncated".
    """
    body: dict[str, Any] = data["body"]
    content: dict[str, Any] = {}
    for path, empty in CONTENT_FIELDS[data["type"]]:
        parent = body if len(path) == 1 else body.get(path[0])
        if not isinstance(parent, dict):
            continue
        value = parent.get(path[-1])
        if value is None or value == empty:
            continue
        content[".".join(path)] = value
        parent[path[-1]] = empty
    if not content:
        return False
    aad = associated_data(data["type"], data["event_id"], body["unit_hash"])
    plain = orjson.dumps(content)
    truncated = False
    if max_plain is not None and len(plain) > max_plain:
        fitted = fit_content(content, max_plain)
        if fitted is not None:
            plain, truncated = fitted, True
    ciphertext = key.aead.encrypt(nonce, plain, aad)
    body["sealed"] = {
        "alg": ALG,
        "kid": key.kid,
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
        "fields": list(content),
    }
    return "truncated" if truncated else True


def _place(body: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    node = body
    for part in parents:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child  # a copy: the caller's event is not changed
        node = child
    node[name] = value


def is_sealed(event: dict[str, Any]) -> bool:
    """True when the event dict carries sealed content."""
    body = event.get("body")
    return isinstance(body, dict) and bool(body.get("sealed"))


def open_event(event: dict[str, Any], keys: KeyReader) -> dict[str, Any]:
    """The event with its content restored; or, once its unit's key is gone, every sealed
    field set to "[erased]" and `"erased": true`. Events never sealed come back as they are.

    Raises SealError when the key is there but the content does not authenticate.
    """
    body = event.get("body")
    if not isinstance(body, dict):
        return event
    sealed = body.get("sealed")
    if not sealed:
        return event
    if not isinstance(sealed, dict):
        raise SealError("body.sealed is not an object")
    fields, kid, unit = sealed.get("fields"), sealed.get("kid"), body.get("unit_hash")
    if not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        raise SealError("body.sealed.fields is not a list of field names")
    if not isinstance(unit, str) or not isinstance(kid, str) or sealed.get("alg") != ALG:
        raise SealError("a sealed event needs unit_hash, sealed.kid and alg A256GCM")
    out = {**event, "body": {**body, "sealed": None}}
    key = keys.unit_key(unit)
    if key is None or key.kid != kid:
        # The unit was forgotten (a key made since then has another id).
        for name in fields:
            _place(out["body"], name, ERASED)
        out["erased"] = True
        return out
    aad = associated_data(str(event.get("type")), event.get("event_id"), unit)
    try:
        plain = key.aead.decrypt(_unb64(sealed.get("nonce")), _unb64(sealed.get("ciphertext")), aad)
    except InvalidTag as exc:
        raise SealError(f"sealed content of event {event.get('event_id')} does not verify") from exc
    content = orjson.loads(plain)
    if not isinstance(content, dict):
        raise SealError("sealed content is not an object")
    for name, value in content.items():
        _place(out["body"], name, value)
    return out
