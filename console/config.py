"""ConsoleConfig: sessions, review queues, taxonomy, overlap (a section of Settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

QueueSignal = Literal["report", "thumbs_down_edit", "safety", "low_score", "audit_sample"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueConfig(_Strict):
    """One named review queue and the signals that select answers into it."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    signals: list[QueueSignal] = Field(min_length=1)
    description: str = ""
    # audit_sample: the share of completions (per flag and variant) sampled into the queue.
    sample_rate: float = Field(0.02, ge=0.0, le=1.0)
    # low_score: answers whose evaluator score is below this (evaluation events, issue 17).
    score_below: float = 0.5
    # How many different reviewers label each item (2 gives Cohen's kappa).
    overlap: int = Field(1, ge=1, le=2)


def _default_queues() -> list[QueueConfig]:
    return [
        QueueConfig(name="reports", signals=["report", "safety"], description="Reported or unsafe"),
        QueueConfig(
            name="edits", signals=["thumbs_down_edit"], description="Thumbs down with an edit"
        ),
        QueueConfig(name="audit", signals=["audit_sample"], description="Random audit sample"),
    ]


class ConsoleConfig(_Strict):
    """The web console served at /console (and by `loopgate console`)."""

    enabled: bool = True
    # Key for the session cookies; None: derived from ids.keys (else random per process).
    session_secret: SecretStr | None = None
    session_ttl_s: float = Field(8 * 3600, gt=0)
    queues: list[QueueConfig] = Field(default_factory=_default_queues)
    taxonomy: list[str] = Field(
        default_factory=lambda: ["helpful", "wrong", "unsafe", "off_topic", "rude", "other"]
    )
    # Review queue store: Redis Streams (a consumer group per queue) or, None, in process.
    redis_url: str | None = None
    namespace: str = Field("loopgate", pattern=r"^[A-Za-z0-9._-]+$")
    # A claimed item not labelled within this time goes back to the queue.
    claim_timeout_s: float = Field(600.0, gt=0)
    max_items: int = Field(10_000, ge=10, description="per queue; the oldest are trimmed")
    # Recent events and answers kept in memory for the events page and side by side.
    recent_events: int = Field(2_000, ge=10)
    max_pairs: int = Field(1_000, ge=1)
    sample_seed: int | None = None
