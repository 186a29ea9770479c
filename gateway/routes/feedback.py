"""POST /v1/feedback (and /v1/feedback/batch): human judgements of answers, as events.

Feedback needs nothing but the answer's signed id: it says which flag, variant and app
produced the answer. Only the app that got the answer may judge it, within the id's age.
A `preference` judges two answers of one flag (A = response_id, B = other_response_id):
both ids must verify, and a shadow answer's id may only be paired with its own primary's.
"""

from __future__ import annotations

import email.message
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast, get_args

import orjson
from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from starlette.routing import BaseRoute

from feedback.schema import FeedbackKind, Metadata, Source, Winner
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
    Conflict,
    DuplicateAuthorization,
    Forbidden,
    GatewayError,
    InternalError,
    InvalidRequest,
    UnprocessableEntity,
    UpstreamUnavailable,
)
from gateway.guard import body_limit
from gateway.ids import Claims
from gateway.runtime import Runtime

log = logging.getLogger(__name__)


class FeedbackIn(BaseModel):
    """One judgement of one answer."""

    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=2048)
    kind: FeedbackKind
    value: float | None = Field(None, description="Rating 1-5 for `rating`; a score otherwise")
    edited_text: str | None = Field(None, max_length=100_000, description="For `edit`")
    category: str | None = Field(None, min_length=1, max_length=256, description="For `report`")
    comment: str | None = Field(None, max_length=10_000)
    metadata: Metadata = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, min_length=1, max_length=256)
    other_response_id: str | None = Field(
        None, min_length=1, max_length=2048, description="For `preference`: answer B"
    )
    winner: Winner | None = Field(None, description="For `preference`: a, b, tie or both_bad")

    @model_validator(mode="after")
    def _fits_kind(self) -> FeedbackIn:
        problem = kind_problem(
            self.kind, self.response_id, self.value, self.edited_text, self.category,
            self.comment, self.other_response_id, self.winner,
        )  # fmt: skip
        if problem is not None:
            raise ValueError(problem)
        return self


def kind_problem(
    kind: str,
    response_id: str,
    value: float | None,
    edited_text: str | None,
    category: str | None,
    comment: str | None,
    other_response_id: str | None,
    winner: str | None,
) -> str | None:
    """What an item lacks for its kind (None: nothing); the one copy of these rules."""
    if kind == "rating" and (value is None or not 1 <= value <= 5):
        return "a rating needs a value from 1 to 5"
    if kind == "edit" and not edited_text:
        return "an edit needs edited_text"
    if kind == "report" and not category:
        return "a report needs a category"
    if kind == "comment" and not comment:
        return "a comment needs comment text"
    if kind == "preference":
        if not other_response_id or not winner:
            return "a preference needs other_response_id (answer B) and a winner"
        if other_response_id == response_id:
            return "a preference compares two different answers"
    elif other_response_id is not None or winner is not None:
        return "other_response_id and winner are for kind `preference` only"
    return None


class FeedbackOut(BaseModel):
    """What was recorded."""

    object: Literal["feedback"] = "feedback"
    id: str | None = Field(description="The event id; null when this was a repeat")
    response_id: str
    kind: str
    flag: str | None
    variant: str | None
    recorded: bool
    duplicate: bool
    source: Source = "user"
    other_response_id: str | None = None
    other_variant: str | None = None
    winner: Winner | None = None


class FeedbackBatchIn(BaseModel):
    """Several judgements at once; each is accepted or refused on its own."""

    model_config = ConfigDict(extra="forbid")
    # Checked one by one (each as FeedbackIn), so that an invalid item refuses only itself.
    items: list[Any] = Field(
        min_length=1, max_length=1000, description="FeedbackIn objects, as /v1/feedback takes"
    )


class ItemError(BaseModel):
    """Why one batch item was refused, in OpenAI's error terms."""

    message: str
    type: str
    param: str | None
    code: str | None


class FeedbackBatchItem(BaseModel):
    """The outcome of one batch item."""

    index: int
    status: int
    feedback: FeedbackOut | None = None
    error: ItemError | None = None


class FeedbackBatchOut(BaseModel):
    """Per-item outcomes, in request order."""

    object: Literal["list"] = "list"
    data: list[FeedbackBatchItem]
    recorded: int


@dataclass(frozen=True, slots=True)
class Judge:
    """Who judged, when not the app's end user: a reviewer or a judge model (admin API)."""

    source: Source
    name: str
    queue: str | None = None
    time_spent_ms: int | None = None


# An item as FeedbackIn.model_dump() gives it: every field, in the model's order.
Item = dict[str, Any]
_ITEM_KEYS = frozenset(FeedbackIn.model_fields)
_KINDS = frozenset(get_args(FeedbackKind))
_WINNERS = frozenset(get_args(Winner))
# Kinds that kind_problem accepts without value, text, category or a pair.
_BARE_KINDS = frozenset(
    k for k in _KINDS if kind_problem(k, "-", None, None, None, None, None, None) is None
)
_EXACT_FLOAT = 2**53  # ints up to this become the same float in pydantic and in float()


async def record_feedback(
    rt: Runtime,
    item: FeedbackIn,
    app_id: str | None,
    consent: str,
    now: float,
    judge: Judge | None = None,
) -> FeedbackOut:
    """`record` of a validated model (the admin API), answered as FeedbackOut."""
    fingerprint = _fingerprint(item) if item.idempotency_key is not None else None
    fields = item.model_dump(include=set(_ITEM_KEYS))
    out = await record(rt, fields, app_id, consent, now, judge, fingerprint)
    return FeedbackOut.model_validate(out)


async def record(
    rt: Runtime,
    item: Item,
    app_id: str | None,
    consent: str,
    now: float,
    judge: Judge | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Verify the id(s), check the app, dedupe, emit the event; raises GatewayError when refused.

    Returns FeedbackOut's fields. app_id None (the admin API) accepts any app's answers; the
    event names the answer's app. `fingerprint`: the idempotency fingerprint when the caller
    has its own (else the item's, see item_fingerprint).
    """
    events = rt.events
    if events is None:
        raise UpstreamUnavailable("the event pipeline is disabled (events.enabled is false)")
    response_id, other_id = item["response_id"], item["other_response_id"]
    claims = _verified(rt, response_id, app_id, now, "response_id")
    other: Claims | None = None
    if other_id is not None:
        other = _verified(rt, other_id, app_id, now, "other_response_id")
        check_pair(claims, other)
    other_variant = other.variant if other else None
    out = {
        "object": "feedback",
        "id": None,
        "response_id": response_id,
        "kind": item["kind"],
        "flag": claims.flag,
        "variant": claims.variant,
        "recorded": False,
        "duplicate": False,
        "source": judge.source if judge else "user",
        "other_response_id": other_id,
        "other_variant": other_variant,
        "winner": item["winner"],
    }
    key = item["idempotency_key"]
    if key is not None:
        scope = app_id if judge is None else f"{judge.source}:{judge.name}"
        scoped = f"{scope}\0{response_id}\0{key}"
        use = await rt.idempotency.use(scoped, fingerprint or item_fingerprint(item))
        if use == "conflict":
            raise Conflict(
                "this idempotency_key was used with a different body", param="idempotency_key"
            )
        if use == "repeat":
            out["duplicate"] = True
            return out
    body = _event_body(item, claims, other_variant, consent, judge)
    event = rt.recorder.feedback_recorded(body, events, now)
    out["id"] = str(event.data["event_id"])
    out["recorded"] = True
    return out


def _event_body(
    item: Item, claims: Claims, other_variant: str | None, consent: str, judge: Judge | None
) -> dict[str, Any]:
    """FeedbackBody's dump for this judgement (the fields gateway.events.feedback_event takes)."""
    return {
        "response_id": item["response_id"],
        "flag": claims.flag,
        "flag_version": claims.flag_version,
        "variant": claims.variant,
        "app": claims.app,
        "unit_hash": claims.unit,
        "response_time": claims.time,
        "kind": item["kind"],
        "value": item["value"],
        "edited_text": item["edited_text"],
        "category": item["category"],
        "comment": item["comment"],
        "metadata": item["metadata"],
        "idempotency_key": item["idempotency_key"],
        "safety": {},
        "consent": "none" if consent == "none" else "full",
        "source": judge.source if judge else "user",
        "reviewer": judge.name if judge else None,
        "queue": judge.queue if judge else None,
        "time_spent_ms": judge.time_spent_ms if judge else None,
        "other_response_id": item["other_response_id"],
        "other_variant": other_variant,
        "winner": item["winner"],
        "sealed": None,
    }


def _verified(rt: Runtime, response_id: str, app_id: str | None, now: float, param: str) -> Claims:
    """The claims of a valid id given to `app_id` (any app when None)."""
    try:
        claims = rt.signer.verify(response_id, now=now, max_age=rt.settings.ids.max_age_s)
    except GatewayError as err:
        err.param = param
        raise
    if app_id is not None and claims.app != app_id:
        raise Forbidden("this answer was given to another app", param=param)
    return claims


def check_pair(a: Claims, b: Claims) -> None:
    """Refuse two answers that cannot be compared (UnprocessableEntity); pure.

    Both must be of one flag and one app, and not the same answer. A shadow answer's id
    carries its primary's nonce (signed): it may only be compared with that primary, so a pair
    cannot be forged from two unrelated ids. Two primaries shown side by side are fine.
    """
    if a.flag is None or a.flag != b.flag:
        raise UnprocessableEntity(
            f"the two answers are of different flags ({a.flag!r}, {b.flag!r})",
            param="other_response_id",
        )
    if a.app != b.app:
        raise UnprocessableEntity(
            "the two answers were given to different apps", param="other_response_id"
        )
    if a == b or (a.nonce == b.nonce and a.pair == b.pair):
        raise UnprocessableEntity(
            "a preference compares two different answers", param="other_response_id"
        )
    for shadow, primary in ((a, b), (b, a)):
        if shadow.pair is not None and shadow.pair != primary.nonce:
            raise UnprocessableEntity(
                "a shadow answer can only be compared with its own primary",
                param="other_response_id",
            )


def _fingerprint(item: FeedbackIn) -> str:
    """What makes two uses of one idempotency key the same judgement."""
    return hashlib.sha256(item.model_dump_json().encode()).hexdigest()[:32]


def item_fingerprint(item: Item) -> str:
    """_fingerprint of the FeedbackIn that `item` is the dump of: the same JSON, by orjson."""
    try:
        raw = orjson.dumps(item)
    except orjson.JSONEncodeError:  # what orjson cannot write (ints past 64 bits, ...)
        return _fingerprint(FeedbackIn.model_validate(item))
    return hashlib.sha256(raw).hexdigest()[:32]


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
    fingerprint = _fingerprint(model) if model.idempotency_key is not None else None
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
        try:
            data = _parsed(raw, headers.content_type)
            consent = caller.consent_for(consent_header(scope["headers"]))
            if self.batch:
                answer = await _record_batch(rt, data, caller.app_id, consent)
            else:
                answer = await _record_one(rt, data, caller.app_id, consent)
        except GatewayError as err:
            await send_json(send, err.status, err.body())
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


# -- OpenAPI ------------------------------------------------------------------------------------

ConsentHeader = Annotated[str | None, Header(alias="X-Loopgate-Consent")]


def openapi_routes() -> list[BaseRoute]:
    """FastAPI routes that describe the raw endpoints in /openapi.json; never served."""
    docs = APIRouter(tags=["feedback"])

    @docs.post("/v1/feedback", response_model=FeedbackOut)
    async def post_feedback(item: FeedbackIn, consent: ConsentHeader = None) -> FeedbackOut:
        """Record one judgement of an answer."""
        raise NotImplementedError  # FeedbackEndpoint serves it

    @docs.post("/v1/feedback/batch", response_model=FeedbackBatchOut)
    async def post_feedback_batch(
        batch: FeedbackBatchIn, consent: ConsentHeader = None
    ) -> FeedbackBatchOut:
        """Record several judgements; a refused item does not stop the others."""
        raise NotImplementedError  # FeedbackEndpoint serves it

    return list(docs.routes)
