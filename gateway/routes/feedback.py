"""POST /v1/feedback (and /v1/feedback/batch): human judgements of answers, as events.

Feedback needs nothing but the answer's signed id: it says which flag, variant and app
produced the answer. Only the app that got the answer may judge it, within the id's age.
A `preference` judges two answers of one flag (A = response_id, B = other_response_id):
both ids must verify, and a shadow answer's id may only be paired with its own primary's.
The models, `record` and the OpenAPI description live here; the endpoints that serve the
routes are raw ASGI, in gateway.routes.feedback_raw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.routing import BaseRoute

from feedback.schema import FeedbackKind, Metadata, Source, Winner
from gateway.errors import (
    Conflict,
    EventsBacklogged,
    Forbidden,
    GatewayError,
    UnprocessableEntity,
    UpstreamUnavailable,
)
from gateway.ids import Claims
from gateway.runtime import Runtime


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


async def record_feedback(
    rt: Runtime,
    item: FeedbackIn,
    app_id: str | None,
    consent: str,
    now: float,
    judge: Judge | None = None,
) -> FeedbackOut:
    """`record` of a validated model (the admin API), answered as FeedbackOut."""
    fingerprint = model_fingerprint(item) if item.idempotency_key is not None else None
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
    if events.backlogged():
        raise backlogged()
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


def backlogged() -> EventsBacklogged:
    """The refusal of feedback the event pipeline has no room for: refused, not accepted and
    then dropped, so the caller keeps it and tries again."""
    return EventsBacklogged(
        "the gateway's event pipeline is behind (Kafka slow or away and the spool busy); "
        "the judgement was not recorded: try again",
        headers={"retry-after": "1"},
    )


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


def model_fingerprint(item: FeedbackIn) -> str:
    """What makes two uses of one idempotency key the same judgement."""
    return hashlib.sha256(item.model_dump_json().encode()).hexdigest()[:32]


def item_fingerprint(item: Item) -> str:
    """model_fingerprint of the FeedbackIn that `item` is the dump of: the same JSON, by
    orjson."""
    try:
        raw = orjson.dumps(item)
    except orjson.JSONEncodeError:  # what orjson cannot write (ints past 64 bits, ...)
        return model_fingerprint(FeedbackIn.model_validate(item))
    return hashlib.sha256(raw).hexdigest()[:32]


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
