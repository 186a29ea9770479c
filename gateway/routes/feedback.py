"""POST /v1/feedback (and /v1/feedback/batch): human judgements of answers, as events.

Feedback needs nothing but the answer's signed id: it says which flag, variant and app
produced the answer. Only the app that got the answer may judge it, within the id's age.
A `preference` judges two answers of one flag (A = response_id, B = other_response_id):
both ids must verify, and a shadow answer's id may only be paired with its own primary's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from feedback.schema import FeedbackBody, FeedbackKind, Metadata, Source, Winner
from gateway.deps import CallerDep, RuntimeDep
from gateway.errors import (
    Conflict,
    Forbidden,
    GatewayError,
    InvalidRequest,
    UnprocessableEntity,
    UpstreamUnavailable,
)
from gateway.ids import Claims
from gateway.runtime import Runtime

router = APIRouter(tags=["feedback"])


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
        if self.kind == "rating" and (self.value is None or not 1 <= self.value <= 5):
            raise ValueError("a rating needs a value from 1 to 5")
        if self.kind == "edit" and not self.edited_text:
            raise ValueError("an edit needs edited_text")
        if self.kind == "report" and not self.category:
            raise ValueError("a report needs a category")
        if self.kind == "comment" and not self.comment:
            raise ValueError("a comment needs comment text")
        if self.kind == "preference":
            if not self.other_response_id or not self.winner:
                raise ValueError("a preference needs other_response_id (answer B) and a winner")
            if self.other_response_id == self.response_id:
                raise ValueError("a preference compares two different answers")
        elif self.other_response_id is not None or self.winner is not None:
            raise ValueError("other_response_id and winner are for kind `preference` only")
        return self


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


async def record_feedback(
    rt: Runtime,
    item: FeedbackIn,
    app_id: str | None,
    consent: str,
    now: float,
    judge: Judge | None = None,
) -> FeedbackOut:
    """Verify the id(s), check the app, dedupe, emit the event; raises GatewayError when refused.

    app_id None (the admin API) accepts any app's answers; the event names the answer's app.
    """
    if rt.events is None:
        raise UpstreamUnavailable("the event pipeline is disabled (events.enabled is false)")
    claims = _verified(rt, item.response_id, app_id, now, "response_id")
    other: Claims | None = None
    if item.other_response_id is not None:
        other = _verified(rt, item.other_response_id, app_id, now, "other_response_id")
        check_pair(claims, other)
    out = FeedbackOut(
        id=None,
        response_id=item.response_id,
        kind=item.kind,
        flag=claims.flag,
        variant=claims.variant,
        recorded=False,
        duplicate=False,
        source=judge.source if judge else "user",
        other_response_id=item.other_response_id,
        other_variant=other.variant if other else None,
        winner=item.winner,
    )
    if item.idempotency_key is not None:
        scope = app_id if judge is None else f"{judge.source}:{judge.name}"
        scoped = f"{scope}\0{item.response_id}\0{item.idempotency_key}"
        use = await rt.idempotency.use(scoped, _fingerprint(item))
        if use == "conflict":
            raise Conflict(
                "this idempotency_key was used with a different body", param="idempotency_key"
            )
        if use == "repeat":
            return out.model_copy(update={"duplicate": True})
    body = FeedbackBody(
        response_id=item.response_id,
        flag=claims.flag,
        flag_version=claims.flag_version,
        variant=claims.variant,
        app=claims.app,
        unit_hash=claims.unit,
        response_time=claims.time,
        kind=item.kind,
        value=item.value,
        edited_text=item.edited_text,
        category=item.category,
        comment=item.comment,
        metadata=item.metadata,
        idempotency_key=item.idempotency_key,
        consent="none" if consent == "none" else "full",
        source=judge.source if judge else "user",
        reviewer=judge.name if judge else None,
        queue=judge.queue if judge else None,
        time_spent_ms=judge.time_spent_ms if judge else None,
        other_response_id=item.other_response_id,
        other_variant=other.variant if other else None,
        winner=item.winner,
    )
    event = rt.recorder.feedback_received(body, rt.events, now)
    return out.model_copy(update={"id": str(event.event_id), "recorded": True})


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


ConsentHeader = Annotated[str | None, Header(alias="X-Loopgate-Consent")]


@router.post("/v1/feedback", response_model=FeedbackOut)
async def post_feedback(
    item: FeedbackIn, rt: RuntimeDep, app: CallerDep, consent: ConsentHeader = None
) -> FeedbackOut:
    """Record one judgement of an answer."""
    return await record_feedback(rt, item, app.app_id, app.consent_for(consent), time.time())


@router.post("/v1/feedback/batch", response_model=FeedbackBatchOut)
async def post_feedback_batch(
    batch: FeedbackBatchIn, rt: RuntimeDep, app: CallerDep, consent: ConsentHeader = None
) -> FeedbackBatchOut:
    """Record several judgements; a refused item does not stop the others."""
    if len(batch.items) > rt.settings.feedback.max_batch:
        raise InvalidRequest(
            f"a batch holds at most {rt.settings.feedback.max_batch} items", param="items"
        )
    now = time.time()
    results: list[FeedbackBatchItem] = []
    for index, raw in enumerate(batch.items):
        try:
            item = _item(raw)
            out = await record_feedback(rt, item, app.app_id, app.consent_for(consent), now)
        except GatewayError as err:
            error = ItemError(message=err.message, type=err.type, param=err.param, code=err.code)
            results.append(FeedbackBatchItem(index=index, status=err.status, error=error))
        else:
            results.append(FeedbackBatchItem(index=index, status=200, feedback=out))
    return FeedbackBatchOut(
        data=results, recorded=sum(1 for r in results if r.feedback and r.feedback.recorded)
    )


def _item(raw: Any) -> FeedbackIn:
    """One batch item as FeedbackIn, or the 422 that /v1/feedback would answer for it."""
    try:
        return FeedbackIn.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        raise UnprocessableEntity(message, param=param) from exc
