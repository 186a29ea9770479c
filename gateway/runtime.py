"""Runtime: what the request path needs, built once in the lifespan and read from app.state."""

from __future__ import annotations

from dataclasses import dataclass, field

from feedback.emitter import EventPipeline
from gateway.auth import Authenticator
from gateway.evaluators import Evaluators
from gateway.events import audit_event, completion_event
from gateway.exchange import Exchange
from gateway.idempotency import IdempotencyKeys, LocalIdempotencyKeys
from gateway.ids import Claims, ResponseIdSigner, new_nonce
from gateway.metrics import Metrics
from gateway.observer import Observer
from gateway.ratelimit import RateLimiter
from gateway.resolver import Resolver
from gateway.settings import Settings
from gateway.tracing import Tracing
from gateway.upstream import Upstreams
from rollout.counters import ExperimentCounters
from router.stores.base import AuditRecord, FlagStore, log_audit


@dataclass(eq=False)
class Runtime:
    """Clients and cores of one gateway process; one attribute lookup away from a handler."""

    settings: Settings
    upstreams: Upstreams
    resolver: Resolver
    metrics: Metrics
    signer: ResponseIdSigner
    events: EventPipeline | None = None
    flags: FlagStore | None = None
    idempotency: IdempotencyKeys = field(default_factory=lambda: LocalIdempotencyKeys(3600, 10_000))
    settings_loaded_at: float = 0.0
    ready: bool = True
    notes: dict[str, str] = field(default_factory=dict)
    # Safety check and drift profile of finished exchanges; None: off (bare test apps).
    observer: Observer | None = None
    # None: tracing is off, and the request path makes no spans.
    tracing: Tracing | None = None
    # None: every caller is the anonymous app `default`, no rate limits (bare test apps).
    auth: Authenticator | None = None
    limiter: RateLimiter | None = None
    # Experiment counters (batched in memory, flushed off the request path); None: off.
    experiments: ExperimentCounters | None = None
    # Online evaluators (reward model, judge), scoring finished answers off the path; None: off.
    evaluators: Evaluators | None = None

    def unit_hash(self, ex: Exchange) -> str:
        """The keyed hash of the request's unit id, computed once."""
        if not ex.unit_hash:
            ex.unit_hash = self.signer.unit_hash(ex.unit_id)
        return ex.unit_hash

    def response_id(self, ex: Exchange) -> str:
        """The signed id that replaces the upstream's in the answer."""
        claims = Claims(
            flag=ex.flag or None,
            variant=ex.variant or None,
            flag_version=ex.flag_version,
            app=ex.app_id,
            unit=self.unit_hash(ex),
            time=int(ex.started_at),
            nonce=new_nonce(ex.upstream_id),
        )
        return self.signer.sign(claims)

    def record(self, ex: Exchange) -> None:
        """Hand the completion event to the pipeline; never blocks the request."""
        # After the answer was sent: the checks cost CPU, not the client's latency.
        safety = self.observer.observe(ex) if self.observer is not None else None
        if self.events is not None:
            event = completion_event(
                ex, instance=self.settings.instance, unit_hash=self.unit_hash(ex), safety=safety
            )
            self.events.emit(event)
        if self.evaluators is not None:
            self.evaluators.offer(ex)
        counters = self.experiments
        if counters is not None and ex.reason == "split":
            # Only the weighted split is an exposure: QA, forced and allow-listed traffic
            # would bias the comparison and the sample ratio check.
            counters.count_exchange(
                ex.flag, ex.flag_version, ex.variant, self.unit_hash(ex),
                ex.status, ex.latency_s, ex.ttft_s,
                safety_findings=sum(safety.values()) if safety else 0,
            )  # fmt: skip

    def audit(self, record: AuditRecord) -> None:
        """A flag change: logged, and written as an audit event."""
        log_audit(record)
        if self.events is None:
            return
        self.events.emit(audit_event(record, instance=self.settings.instance))
