"""The raw ASGI endpoints of POST /v1/feedback and /v1/feedback/batch (gateway.routes.feedback
holds the models and `record`), and the plain validation that lets them skip pydantic for
the common valid body while refusing everything else in pydantic's words."""

from __future__ import annotations

import email.message
import json
import logging
import time
from typing import Any, cast, get_args

import orjson
from pydantic import TypeAdapter, ValidationError

from feedback.schema import FeedbackKind, Winner
from gateway.asgi import (
    ClientGone,
    Message,
    Receive,
    RequestHeaders,
    Send,
    read_body,
    refuse,
    send_json,
)
from gateway.auth import AppPrincipal
from gateway.errors import (
    DuplicateAuthorization,
    GatewayError,
    InternalError,
    InvalidRequest,
    UnprocessableEntity,
)
from gateway.guard import body_limit
from gateway.routes.feedback import (
    FeedbackBatchIn,
    FeedbackIn,
    Item,
    backlogged,
    kind_problem,
    model_fingerprint,
    record,
)
from gateway.runtime import Runtime

log = logging.getLogger(__name__)

_ITEM_KEYS = frozenset(FeedbackIn.model_fields)
_KINDS = frozenset(get_args(FeedbackKind))
_WINNERS = frozenset(get_args(Winner))
# Kinds that kind_problem accepts without value, text, category or a pair.
_BARE_KINDS = frozenset(
    k for k in _KINDS if kind_problem(k, "-", None, None, None, None, None, None) is None
)
_EXACT_FLOAT = 2**53  # ints up to this become the same float in pydantic and in float()


# -- validation: FeedbackIn's answer, most of the time without building it -------------------


def plain_item(data: Any) -> Item | None:
    """`data` as FeedbackIn.model_dump() would give it, when it is plainly valid; else None.

    Plainly valid: a JSON object of FeedbackIn's fields, strings within their lengths, a
    number for value, flat metadata, and kind_problem satisfied. Anything else (None) goes to
    FeedbackIn itself, so every refusal is pydantic's, word for word.
    """
    if type(data) is not dict:
        return None
    if len(data) == 2:  # the common judgement, {"response_id", "kind"}: fewer checks
        bare = _bare_item(data)
        if bare is not None:
            return bare
    if not _ITEM_KEYS.issuperset(data):
        return None
    get = data.get
    response_id, kind, value = get("response_id"), get("kind"), get("value")
    edited_text, category, comment = get("edited_text"), get("category"), get("comment")
    key, other, winner = get("idempotency_key"), get("other_response_id"), get("winner")
    metadata = get("metadata")
    if not (
        _text(response_id, 1, 2048)
        and type(kind) is str
        and kind in _KINDS
        and (edited_text is None or _text(edited_text, 0, 100_000))
        and (category is None or _text(category, 1, 256))
        and (comment is None or _text(comment, 0, 10_000))
        and (key is None or _text(key, 1, 256))
        and (other is None or _text(other, 1, 2048))
        and (winner is None or (type(winner) is str and winner in _WINNERS))
    ):
        return None
    if metadata is None:
        if "metadata" in data:
            return None
        metadata = {}
    elif not _plain_metadata(metadata):
        return None
    if value is not None:
        if type(value) is int and -_EXACT_FLOAT <= value <= _EXACT_FLOAT:
            value = float(value)
        elif type(value) is not float:
            return None
    rid = cast(str, response_id)  # checked by _text above
    if kind_problem(kind, rid, value, edited_text, category, comment, other, winner):
        return None
    return {
        "response_id": rid,
        "kind": kind,
        "value": value,
        "edited_text": edited_text,
        "category": category,
        "comment": comment,
        "metadata": metadata,
        "idempotency_key": key,
        "other_response_id": other,
        "winner": winner,
    }


def _bare_item(data: dict[str, Any]) -> Item | None:
    """plain_item of a two-key dict when it is {"response_id", "kind"} of a kind that needs
    nothing else; None: plain_item checks it the long way."""
    response_id, kind = data.get("response_id"), data.get("kind")
    if type(kind) is not str or kind not in _BARE_KINDS or not _text(response_id, 1, 2048):
        return None
    return {
        "response_id": response_id,
        "kind": kind,
        "value": None,
        "edited_text": None,
        "category": None,
        "comment": None,
        "metadata": {},
        "idempotency_key": None,
        "other_response_id": None,
        "winner": None,
    }


def _text(value: Any, shortest: int, longest: int) -> bool:
    return type(value) is str and shortest <= len(value) <= longest


def _plain_metadata(metadata: Any) -> bool:
    """Metadata FeedbackIn keeps as it is: at most 32 keys of 1-64 characters, scalar values."""
    if type(metadata) is not dict or len(metadata) > 32:
        return False
    for name, value in metadata.items():
        if not 0 < len(name) <= 64:
            return False
        kind = type(value)
        if kind is str:
            if len(value) > 1024:
                return False
        elif value is not None and kind is not int and kind is not float and kind is not bool:
            return False
    return True


def _unprocessable(exc: ValidationError, skip: tuple[str, ...] = ()) -> UnprocessableEntity:
    """The 422 of the first error, as gateway.errors renders FastAPI's (`skip`: loc parts it
    leaves out: "body" and the like, for a whole request body)."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"] if p not in skip) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return UnprocessableEntity(message, param=param)


def batch_item(raw: Any) -> tuple[Item, str | None]:
    """One batch item and its fingerprint (None: item_fingerprint's), or the 422 that
    /v1/feedback would answer for it."""
    item = plain_item(raw)
    if item is not None:
        return item, None
    try:
        model = FeedbackIn.model_validate(raw)
    except ValidationError as exc:
        raise _unprocessable(exc) from exc
    return _dumped(model)


def _dumped(model: FeedbackIn) -> tuple[Item, str | None]:
    fingerprint = model_fingerprint(model) if model.idempotency_key is not None else None
    return model.model_dump(), fingerprint


# -- the raw ASGI endpoints -------------------------------------------------------------------

# FastAPI validates a request body so (from_attributes), which words some errors differently.
_SINGLE = TypeAdapter(FeedbackIn)
_BATCH = TypeAdapter(FeedbackBatchIn)
_REQUEST_PARTS = ("body", "query", "path")  # what gateway.errors leaves out of `param`
_MISSING: Any = object()


class FeedbackEndpoint:
    """POST /v1/feedback, or /v1/feedback/batch (`batch`), as a raw ASGI endpoint.

    Why raw ASGI: every answer an app shows may be judged, so this is a hot path. Through
    FastAPI a one-item call cost 1.2-1.5 ms of CPU (middleware, dependency injection with
    thread-pool hops, pydantic models in and out, response_model validation), about six times
    a bare FastAPI route. Here, as in gateway/proxy.py: the guard's checks (one Authorization
    header, the key before the body, the body within its limit), one orjson parse, plain_item
    for the common valid shape (anything else goes to the same pydantic models and error
    rendering as FastAPI, so refusals are unchanged), and the answer written by orjson.
    HotPath serves it; create_app also routes FastAPI to it, and openapi_routes documents it.
    """

    def __init__(self, path: str, batch: bool) -> None:
        self.path = path
        self.batch = batch

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        rt: Runtime = scope["app"].state.runtime
        headers = RequestHeaders(scope["headers"])
        try:
            caller = _caller(rt, headers)
            limit = body_limit(rt.settings.limits, self.path)
            raw = await read_body(receive, limit, headers.content_length)
        except GatewayError as err:
            await refuse(send, err)
            return
        except ClientGone:
            return
        if rt.events is not None and rt.events.backlogged():
            # Before parsing: a client that retries at once costs little while it lasts.
            refusal = backlogged()
            await send_json(send, refusal.status, refusal.body(), extra=refusal.headers)
            return
        try:
            data = _parsed(raw, headers.content_type)
            consent = caller.consent_for(consent_header(scope["headers"]))
            if self.batch:
                answer = await _record_batch(rt, data, caller.app_id, consent)
            else:
                answer = await _record_one(rt, data, caller.app_id, consent)
        except GatewayError as err:
            await send_json(send, err.status, err.body(), extra=err.headers)
        except Exception:  # the edge: a bug answers 500 in OpenAI's shape, the process lives
            log.exception("%s failed", self.path)
            await send_json(send, 500, InternalError("internal error").body())
        else:
            await send_json(send, 200, answer)


def feedback_endpoints() -> dict[str, FeedbackEndpoint]:
    """The raw feedback endpoints, by path."""
    return {
        "/v1/feedback": FeedbackEndpoint("/v1/feedback", batch=False),
        "/v1/feedback/batch": FeedbackEndpoint("/v1/feedback/batch", batch=True),
    }


def _caller(rt: Runtime, headers: RequestHeaders) -> AppPrincipal:
    """The calling app, checked before the body is read (as gateway.guard does)."""
    if headers.authorizations > 1:
        raise DuplicateAuthorization("send one Authorization header, not several")
    return rt.auth.app(headers.authorization)


def consent_header(raw: list[tuple[bytes, bytes]]) -> str | None:
    """The first X-Loopgate-Consent header, as FastAPI's Header() read it (RequestHeaders
    keeps the last, as the proxy always has)."""
    for name, value in raw:
        if name == b"x-loopgate-consent":
            return value.decode("latin-1")
    return None


def _parsed(raw: bytes, content_type: bytes | None) -> Any:
    """The body as FastAPI hands it to validation: parsed when declared JSON, else the bytes;
    _MISSING when empty. Bad JSON is refused as FastAPI does (422, or 400 when undecodable)."""
    if not raw:
        return _MISSING
    if content_type is None or not _declares_json(content_type):
        return raw  # FastAPI's strict content type: validation refuses it
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:  # FastAPI's parser: NaN, numbers past 64 bits, UTF-16..., and its error positions
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UnprocessableEntity(f"{exc.pos}: JSON decode error", param=str(exc.pos)) from exc
    except Exception as exc:
        raise InvalidRequest("There was an error parsing the body") from exc


def _declares_json(content_type: bytes) -> bool:
    """FastAPI's test: application/json or application/*+json, parameters allowed."""
    if content_type == b"application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type.decode("latin-1")
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def _record_one(rt: Runtime, data: Any, app_id: str, consent: str) -> bytes:
    """Record one judgement; FeedbackOut's JSON."""
    item = plain_item(data)
    fingerprint = None
    if item is None:
        item, fingerprint = _validated_body(data)
    out = await record(rt, item, app_id, consent, time.time(), None, fingerprint)
    return orjson.dumps(out)


def _validated_body(data: Any) -> tuple[Item, str | None]:
    """A request body that is not plainly valid, through FeedbackIn as FastAPI would."""
    if data is _MISSING:
        raise UnprocessableEntity("Field required")
    try:
        model = _SINGLE.validate_python(data, from_attributes=True)
    except ValidationError as exc:
        raise _unprocessable(exc, _REQUEST_PARTS) from exc
    return _dumped(model)


async def _record_batch(rt: Runtime, data: Any, app_id: str, consent: str) -> bytes:
    """Record several judgements, a refused item not stopping the others; FeedbackBatchOut's
    JSON."""
    items = _batch_items(data)
    if len(items) > rt.settings.feedback.max_batch:
        raise InvalidRequest(
            f"a batch holds at most {rt.settings.feedback.max_batch} items", param="items"
        )
    now = time.time()
    results: list[dict[str, Any]] = []
    recorded = 0
    for index, raw in enumerate(items):
        try:
            item, fingerprint = batch_item(raw)
            out = await record(rt, item, app_id, consent, now, None, fingerprint)
        except GatewayError as err:
            error = {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
            results.append({"index": index, "status": err.status, "feedback": None, "error": error})
        else:
            recorded += out["recorded"]
            results.append({"index": index, "status": 200, "feedback": out, "error": None})
    return orjson.dumps({"object": "list", "data": results, "recorded": recorded})


def _batch_items(data: Any) -> list[Any]:
    """The items of a batch body, refused as FeedbackBatchIn would be through FastAPI."""
    if type(data) is dict and len(data) == 1:
        items = data.get("items")
        if type(items) is list and 0 < len(items) <= 1000:
            return items
    if data is _MISSING:
        raise UnprocessableEntity("Field required")
    try:
        return _BATCH.validate_python(data, from_attributes=True).items
    except ValidationError as exc:
        raise _unprocessable(exc, _REQUEST_PARTS) from exc
