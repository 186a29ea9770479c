"""Event envelope and bodies (completion, feedback, audit, evaluation); JSON Schema export."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, get_args
from uuid import UUID

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

SCHEMA_VERSION = 1
COMPLETIONS_TOPIC = "loopgate.completions.v1"
FEEDBACK_TOPIC = "loopgate.feedback.v1"
AUDIT_TOPIC = "loopgate.audit.v1"
EVALUATIONS_TOPIC = "loopgate.evaluations.v1"
TOPICS = (COMPLETIONS_TOPIC, FEEDBACK_TOPIC, AUDIT_TOPIC, EVALUATIONS_TOPIC)
SCHEMA_DIR = Path(__file__).with_name("schemas")

Consent = Literal["full", "none"]
# Who judged: an app's end user (/v1/feedback), a reviewer (the console), or a judge model.
Source = Literal["user", "reviewer", "judge"]
Winner = Literal["a", "b", "tie", "both_bad"]
Status = Literal["ok", "error", "cancelled"]
FeedbackKind = Literal[
    "thumbs_up",
    "thumbs_down",
    "rating",
    "edit",
    "accept",
    "reject",
    "regenerate",
    "report",
    "comment",
    "preference",
]
FEEDBACK_KINDS: tuple[str, ...] = get_args(FeedbackKind)
Findings = dict[str, Annotated[int, Field(ge=0)]]
Label = Annotated[str, StringConstraints(max_length=256)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)] | int | float | bool | None
Metadata = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], MetadataValue],
    Field(max_length=32),
]


def uuid7(now: float) -> UUID:
    """A UUIDv7 for `now` (unix seconds): time-ordered, 74 random bits.

    The bits only have to be unique, not secret: `random` (seeded from the OS at start and
    reseeded after fork) saves a system call per event on the request path.
    """
    ms = int(now * 1000) & ((1 << 48) - 1)
    rand = random.getrandbits(80)
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    return UUID(int=(ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestContent(_Model):
    """What the app sent (redacted): messages or prompt, and the sampling parameters."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class ResponseContent(_Model):
    """What the app got back (redacted): text and tool calls."""

    text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Usage(_Model):
    """Token counts as the upstream reported them."""

    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    total_tokens: int = Field(0, ge=0)


class ErrorInfo(_Model):
    """Why an answer failed, in OpenAI's error terms."""

    type: str
    message: str
    code: str | None = None
    status: int | None = None


class Sealed(_Model):
    """Content fields encrypted with the unit's key (feedback.privacy); they read null (or
    "") in the body until opened with that key."""

    alg: Literal["A256GCM"] = "A256GCM"
    kid: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
    nonce: str
    ciphertext: str
    fields: list[str] = Field(min_length=1)


class CompletionBody(_Model):
    """One answer: who asked which variant, what was said, how it went."""

    response_id: str
    flag: str | None = None
    flag_version: int | None = None
    variant: str | None = None
    app: str
    unit_hash: str
    model_requested: str
    model_served: str | None = None
    endpoint: Literal["chat", "completions"] = "chat"
    stream: bool = False
    request: RequestContent | None = None
    response: ResponseContent | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    latency_ms: float = Field(ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    status: Status = "ok"
    error: ErrorInfo | None = None
    safety: Findings = Field(default_factory=dict)
    consent: Consent = "full"
    fallback: bool = False
    # Shadow traffic (docs/shadow.md): a shadow answer says whose pair it is; a primary says
    # whether a shadow was sent for it.
    role: Literal["primary", "shadow"] = "primary"
    pair_of: str | None = None
    shadowed: bool = False
    sealed: Sealed | None = None


class FeedbackBody(_Model):
    """One human judgement of an answer, tied to it by the response id."""

    response_id: str
    flag: str | None = None
    flag_version: int | None = None
    variant: str | None = None
    app: str
    unit_hash: str | None = None
    response_time: int | None = None
    kind: FeedbackKind
    value: float | None = None
    edited_text: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    category: Label | None = None
    comment: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    idempotency_key: Label | None = None
    safety: Findings = Field(default_factory=dict)
    consent: Consent = "full"
    source: Source = "user"
    reviewer: Label | None = None
    queue: Label | None = None
    time_spent_ms: int | None = Field(None, ge=0)
    # kind `preference`: response_id is answer A, other_response_id answer B.
    other_response_id: str | None = None
    other_variant: str | None = None
    winner: Winner | None = None
    sealed: Sealed | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if self.kind == "preference" and (self.other_response_id is None or self.winner is None):
            raise ValueError("a preference names other_response_id (answer B) and the winner")
        return self


class AuditBody(_Model):
    """A change to what the gateway serves: who did what, and the before and after."""

    who: str
    action: str
    what: str
    version: int | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    reason: str | None = None


class EvaluationBody(_Model):
    """An automatic score of one answer, by a reward model or a judge, keyed by its response id."""

    response_id: str
    flag: str | None = None
    flag_version: int | None = None
    variant: str | None = None
    app: str
    role: Literal["primary", "shadow"] = "primary"
    evaluator: Label
    evaluator_kind: Literal["reward_model", "judge"]
    # The evaluator's model and a hash of its rubric: scores of two versions don't mix.
    version: Label
    score: float
    reason: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    latency_ms: float = Field(ge=0)


class Envelope(_Model):
    """Fields every event carries, before its body."""

    event_id: UUID
    type: str
    schema_version: int = SCHEMA_VERSION
    time: AwareDatetime
    gateway: str
    trace_id: str | None = None

    topic: ClassVar[str]

    @property
    def key(self) -> str:
        """Kafka key: the response id, so an answer and its feedback share a partition."""
        raise NotImplementedError

    @classmethod
    def _header(cls, now: float, gateway: str, trace_id: str | None) -> dict[str, Any]:
        return envelope_fields(now, gateway, trace_id)


class CompletionEvent(Envelope):
    """`completion` on loopgate.completions.v1."""

    type: Literal["completion"] = "completion"
    body: CompletionBody

    topic: ClassVar[str] = COMPLETIONS_TOPIC

    @property
    def key(self) -> str:
        """The response id."""
        return self.body.response_id

    @classmethod
    def create(
        cls, body: CompletionBody, *, gateway: str, now: float, trace_id: str | None = None
    ) -> Self:
        """A new event (fresh event_id) for this body at `now` (unix seconds)."""
        return cls(**cls._header(now, gateway, trace_id), body=body)


class FeedbackEvent(Envelope):
    """`feedback` on loopgate.feedback.v1."""

    type: Literal["feedback"] = "feedback"
    body: FeedbackBody

    topic: ClassVar[str] = FEEDBACK_TOPIC

    @property
    def key(self) -> str:
        """The response id."""
        return self.body.response_id

    @classmethod
    def create(
        cls, body: FeedbackBody, *, gateway: str, now: float, trace_id: str | None = None
    ) -> Self:
        """A new event (fresh event_id) for this body at `now` (unix seconds)."""
        return cls(**cls._header(now, gateway, trace_id), body=body)


class AuditEvent(Envelope):
    """`flag_change` and other changes, on loopgate.audit.v1."""

    type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")] = "flag_change"
    body: AuditBody

    topic: ClassVar[str] = AUDIT_TOPIC

    @property
    def key(self) -> str:
        """What changed (a flag key), so changes to one thing stay in order."""
        return self.body.what

    @classmethod
    def create(
        cls,
        body: AuditBody,
        *,
        gateway: str,
        now: float,
        type: str = "flag_change",
        trace_id: str | None = None,
    ) -> Self:
        """A new audit event of `type` for this body at `now` (unix seconds)."""
        return cls(**cls._header(now, gateway, trace_id), type=type, body=body)


class EvaluationEvent(Envelope):
    """`evaluation` on loopgate.evaluations.v1."""

    type: Literal["evaluation"] = "evaluation"
    body: EvaluationBody

    topic: ClassVar[str] = EVALUATIONS_TOPIC

    @property
    def key(self) -> str:
        """The response id, as the answer's completion and feedback."""
        return self.body.response_id

    @classmethod
    def create(
        cls, body: EvaluationBody, *, gateway: str, now: float, trace_id: str | None = None
    ) -> Self:
        """A new event (fresh event_id) for this body at `now` (unix seconds)."""
        return cls(**cls._header(now, gateway, trace_id), body=body)


Event = CompletionEvent | FeedbackEvent | AuditEvent | EvaluationEvent
EVENT_MODELS: dict[str, type[Envelope]] = {
    "completion": CompletionEvent,
    "feedback": FeedbackEvent,
    "audit": AuditEvent,
    "evaluation": EvaluationEvent,
}


@dataclass(frozen=True, slots=True)
class PlainEvent:
    """An event as the plain dict its model dumps to, built on the request path.

    Building pydantic models there costs tens of microseconds an event; the gateway makes
    every value itself, so it builds the dict directly and the pipeline redacts and
    serialises it like any other event. Tests validate these dicts against the models.
    """

    type: str
    topic: str
    key: str
    data: dict[str, Any]


def envelope_fields(
    now: float, gateway: str, trace_id: str | None, type: str | None = None
) -> dict[str, Any]:
    """The envelope of a new event as its model dumps it (fresh event_id, `now` in UTC).

    With `type`, the fields come in the models' order, so the JSON matches a dumped model's.
    """
    fields: dict[str, Any] = {"event_id": uuid7(now)}
    if type is not None:
        fields["type"] = type
        fields["schema_version"] = SCHEMA_VERSION
    fields["time"] = datetime.fromtimestamp(now, UTC)
    fields["gateway"] = gateway
    fields["trace_id"] = trace_id
    return fields


def to_json(event: Envelope) -> bytes:
    """The event as compact JSON bytes (what Kafka and the spool carry)."""
    return orjson.dumps(event.model_dump(), option=orjson.OPT_UTC_Z)


def from_json(raw: bytes | str) -> Event:
    """Parse and validate an event of any type."""
    data = orjson.loads(raw)
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "completion":
        return CompletionEvent.model_validate(data)
    if kind == "feedback":
        return FeedbackEvent.model_validate(data)
    if kind == "evaluation":
        return EvaluationEvent.model_validate(data)
    return AuditEvent.model_validate(data)


def route_of(raw: dict[str, Any]) -> tuple[str, str]:
    """(topic, key) of an event already parsed to a dict, without validating it."""
    body = raw.get("body") or {}
    kind = raw.get("type")
    if kind == "completion":
        return COMPLETIONS_TOPIC, str(body.get("response_id", ""))
    if kind == "feedback":
        return FEEDBACK_TOPIC, str(body.get("response_id", ""))
    if kind == "evaluation":
        return EVALUATIONS_TOPIC, str(body.get("response_id", ""))
    return AUDIT_TOPIC, str(body.get("what", ""))


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (2020-12) of each event type, keyed by file stem."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in EVENT_MODELS.items():
        schema = model.model_json_schema()
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://loopgate.dev/schemas/{name}.v{SCHEMA_VERSION}.json",
            **schema,
        }
    return out


def render_schema(schema: dict[str, Any]) -> str:
    """The exact text a shipped schema file holds."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate the shipped schema files; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.json"
        path.write_text(render_schema(schema))
        written.append(path)
    return written


def main() -> None:
    """`python -m feedback.schema`: regenerate feedback/schemas/*.json."""
    for path in write_schemas():
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
