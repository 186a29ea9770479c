"""Runtime: what the request path needs, built once at the end of the lifespan, then frozen."""

from __future__ import annotations

from dataclasses import dataclass

from feedback.emitter import EventPipeline
from gateway.auth import Authenticator
from gateway.evaluators import Evaluators
from gateway.idempotency import IdempotencyKeys
from gateway.ids import ResponseIdSigner
from gateway.metrics import Metrics
from gateway.observer import Observer
from gateway.ratelimit import RateLimiter
from gateway.recorder import Recorder
from gateway.resolver import Resolver
from gateway.settings import Settings
from gateway.shadow import ShadowRunner
from gateway.tracing import Tracing
from gateway.upstream import Upstreams
from rollout.service import Experiments
from router.stores.base import FlagStore


class Readiness:
    """The one thing that changes after start: SIGTERM turns /readyz unready."""

    __slots__ = ("ready",)

    def __init__(self) -> None:
        self.ready = True

    def drain(self) -> None:
        """From now on /readyz answers 503."""
        self.ready = False


@dataclass(frozen=True, eq=False, slots=True)
class Runtime:
    """Clients and cores of one gateway process; one attribute lookup away from a handler."""

    settings: Settings
    upstreams: Upstreams
    resolver: Resolver
    metrics: Metrics
    signer: ResponseIdSigner
    # Every moment of every request and piece of feedback goes through it.
    recorder: Recorder
    auth: Authenticator
    limiter: RateLimiter
    idempotency: IdempotencyKeys
    # Safety check and drift profile of finished exchanges.
    observer: Observer
    readiness: Readiness
    settings_loaded_at: float
    # None: off by configuration (events.enabled, flags.source none, experiments.enabled).
    events: EventPipeline | None = None
    flags: FlagStore | None = None
    experiments: Experiments | None = None
    # None: tracing is off, and the request path makes no spans.
    tracing: Tracing | None = None
    # Online evaluators (reward model, judge), one of the recorder's observers; None: off.
    evaluators: Evaluators | None = None
    # Shadow calls of flags that have a shadow (gateway.shadow); None: no flag store.
    shadows: ShadowRunner | None = None

    @property
    def ready(self) -> bool:
        """False once the process is draining."""
        return self.readiness.ready
