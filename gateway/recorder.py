"""The recorder: every lifecycle moment of a request and of feedback, and what is made of it.

One place owns metrics, tracing and events. The request path calls named moments on a
per-request Recording (started, routed, sending, first byte, chunk, failed, finished) and
the feedback routes call `feedback_recorded`; nothing else records anything. With tracing
off the plain classes run and no span code is reached: no `if tracing` at call sites.

A new observer (shadow traffic, online evaluators, ...) is added in one place: the
`observers` of create_app, which the recorder calls at each moment.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Protocol

from feedback.emitter import EventPipeline
from feedback.schema import FeedbackBody, PlainEvent
from gateway.balancer import BalancerMetrics
from gateway.events import audit_event, completion_event, feedback_event
from gateway.exchange import Exchange
from gateway.ids import Claims, ResponseIdSigner, new_nonce
from gateway.metrics import REPORT_CATEGORIES, Metrics, RouteMetrics
from gateway.observer import Observer
from gateway.resolver import Route, ShadowRoute
from gateway.tracing import RequestTrace, Tracing
from rollout.counters import ExperimentCounters
from router.stores.base import AuditRecord, AuditSink, log_audit

log = logging.getLogger(__name__)

_FEEDBACK_CHILDREN_MAX = 4096  # flags x variants x kinds seen: a bound, never reached in practice


class RequestObserver(Protocol):
    """Sees every request and every piece of feedback; must not block (failures are logged)."""

    def started(self, ex: Exchange) -> None:
        """The request arrived (nothing is known about it yet but its id and kind)."""

    def routed(self, ex: Exchange) -> None:
        """Flag evaluation chose the variant: ex.flag, ex.variant, ex.served_model are set."""

    def first_byte(self, ex: Exchange) -> None:
        """The upstream answered (ex.endpoint is set)."""

    def chunk(self, ex: Exchange, data: bytes) -> None:
        """A piece of a streamed answer was sent to the client."""

    def finished(self, ex: Exchange) -> None:
        """The request is over, whatever its status (ex.status, ex.http_status)."""

    def feedback_received(self, body: FeedbackBody) -> None:
        """A judgement of an answer was accepted."""


class Recorder:
    """Metrics, events and experiment counts of requests and feedback; tracing off."""

    def __init__(
        self,
        *,
        instance: str,
        metrics: Metrics,
        upstream_metrics: BalancerMetrics,
        signer: ResponseIdSigner,
        observer: Observer,
        events: EventPipeline | None = None,
        counters: ExperimentCounters | None = None,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        self.instance = instance
        self.metrics = metrics
        self.upstream_metrics = upstream_metrics
        self.signer = signer
        self.observer = observer
        self.events = events
        self.counters = counters
        self.observers = tuple(_Guarded(o) for o in observers)
        # Only observers that read the relayed bytes are called per chunk (`reads_chunks = False`
        # opts out, as the evaluators do): a stream pays nothing for the others.
        self.chunk_observers = tuple(
            _Guarded(o) for o in observers if getattr(o, "reads_chunks", True)
        )
        # The inter-token histogram's bucket bounds: a stream counts its gaps per bucket and
        # adds them when it ends (one call, not one per chunk); None: observed one by one.
        self.itl_bounds = _bucket_bounds(getattr(metrics, "itl", None))
        # The feedback counter's children by (flag, variant, kind): labels() costs ~2 us a call.
        self._feedback_children: dict[tuple[str, str, str], Any] = {}

    def begin(self, ex: Exchange, route_label: str, headers: Any) -> Recording:
        """Request started: its Recording, which the request path reports every moment to."""
        rec = Recording(self, ex, route_label)
        self.metrics.in_flight_by_route[route_label].inc()
        for o in self.observers:
            o.started(ex)
        return rec

    def begin_shadow(self, ex: Exchange, route_label: str, primary: Recording) -> Recording:
        """A shadow call started (gateway.shadow): a Recording that is not a client request.

        `ex` comes routed (flag, variant, served model set). Not in the in-flight gauge or the
        overhead histogram (no client waits on it); its series carry role="shadow"; observers
        see it like any request, with ex.role "shadow".
        """
        rec = Recording(self, ex, route_label)
        for o in self.observers:
            o.started(ex)
            o.routed(ex)
        return rec

    def unit_hash(self, ex: Exchange) -> str:
        """The keyed hash of the request's unit id, computed once."""
        if not ex.unit_hash:
            ex.unit_hash = self.signer.unit_hash(ex.unit_id)
        return ex.unit_hash

    def emit_completion(self, ex: Exchange) -> None:
        """The completion event and the experiment exposure; never blocks the request."""
        # After the answer was sent: the checks cost CPU, not the client's latency.
        safety = self.observer.observe(ex)
        if self.events is not None:
            event = completion_event(
                ex, instance=self.instance, unit_hash=self.unit_hash(ex), safety=safety
            )
            self.events.emit(event)
        if self.counters is not None and ex.reason == "split" and ex.role == "primary":
            # Only the weighted split is an exposure: QA, forced and allow-listed traffic
            # would bias the comparison and the sample ratio check; a shadow is seen by no one.
            self.counters.count_exchange(
                ex.flag, ex.flag_version, ex.variant, self.unit_hash(ex),
                ex.status, ex.latency_s, ex.ttft_s,
                safety_findings=sum(safety.values()) if safety else 0,
            )  # fmt: skip

    def feedback_received(
        self, body: FeedbackBody, events: EventPipeline, now: float
    ) -> PlainEvent:
        """A judgement accepted, as a model (judge models, the admin API): see feedback_recorded."""
        return self.feedback_recorded(body.model_dump(), events, now, body)

    def feedback_recorded(
        self,
        body: dict[str, Any],
        events: EventPipeline,
        now: float,
        model: FeedbackBody | None = None,
    ) -> PlainEvent:
        """A judgement accepted: its event, metrics, experiment counts and observers.

        `body` is FeedbackBody's dump (gateway.events.feedback_event), built by the feedback
        route without the model; observers still get the model (`model`, else validated from
        `body`), and only when there are any.
        """
        if self.observers and model is None:
            model = FeedbackBody.model_validate(body)  # before the pipeline owns `body`
        event = feedback_event(
            body, instance=self.instance, now=now, trace_id=self._feedback_trace(body)
        )
        events.emit(event)
        flag, variant, kind = body["flag"] or "", body["variant"] or "", body["kind"]
        self._feedback_child(flag, variant, kind).inc()
        if self.counters is not None and flag and variant:
            version = body["flag_version"] or 0
            self.counters.count_feedback(flag, version, variant, kind, body["value"])
            other, winner = body["other_variant"], body["winner"]
            if kind == "preference" and other and winner:
                self.counters.count_preference(flag, version, variant, other, winner)
        if kind == "report" and body["category"]:
            self.metrics.reports.labels(flag, variant, _bounded(body["category"])).inc()
        if model is not None:
            for o in self.observers:
                o.feedback_received(model)
        return event

    def _feedback_trace(self, body: dict[str, Any]) -> str | None:
        return None

    def _feedback_child(self, flag: str, variant: str, kind: str) -> Any:
        key = (flag, variant, kind)
        child = self._feedback_children.get(key)
        if child is None:
            if len(self._feedback_children) >= _FEEDBACK_CHILDREN_MAX:
                self._feedback_children.clear()
            child = self._feedback_children[key] = self.metrics.feedback.labels(*key)
        return child


class TracedRecorder(Recorder):
    """The recorder with tracing on: the same moments, plus spans and GenAI metrics."""

    def __init__(self, tracing: Tracing, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tracing = tracing

    def begin(self, ex: Exchange, route_label: str, headers: Any) -> Recording:
        """Request started: a Recording with the request's server span."""
        trace = self.tracing.begin(ex.kind, headers.traceparent, headers.tracestate)
        ex.trace_id = trace.trace_id
        rec = TracedRecording(self, ex, route_label, trace)
        self.metrics.in_flight_by_route[route_label].inc()
        for o in self.observers:
            o.started(ex)
        return rec

    def begin_shadow(self, ex: Exchange, route_label: str, primary: Recording) -> Recording:
        """A shadow call started: its own trace, whose span links to the primary's."""
        link = primary.trace.server if isinstance(primary, TracedRecording) else None
        trace = self.tracing.begin_shadow(ex.kind, ex.model, link)
        ex.trace_id = trace.trace_id
        trace.routed(ex, ex.request)
        rec = TracedRecording(self, ex, route_label, trace)
        for o in self.observers:
            o.started(ex)
            o.routed(ex)
        return rec

    def _feedback_trace(self, body: dict[str, Any]) -> str | None:
        return self.tracing.record_feedback(
            body["response_id"],
            body["kind"],
            value=body["value"],
            flag=body["flag"],
            variant=body["variant"],
            category=body["category"],
        )


class Recording:
    """The moments of one request, reported by the request path as they happen."""

    __slots__ = ("_gaps", "_gaps_s", "_last", "ex", "label", "r", "rm", "watched")

    def __init__(self, recorder: Recorder, ex: Exchange, label: str) -> None:
        self.r = recorder
        self.ex = ex
        self.label = label
        self.rm: RouteMetrics | None = None
        self._last: float | None = None
        self._gaps: list[int] | None = None  # inter-token gaps per histogram bucket, not yet added
        self._gaps_s = 0.0  # and their sum
        # Whether any observer wants each chunk: the stream relay skips the call when not.
        self.watched = bool(recorder.chunk_observers)

    def routing(self, model: str) -> None:
        """Flag evaluation starts (a span when tracing)."""

    def routed(self, route: Route, unit_from: str) -> None:
        """The route is chosen and noted on the exchange."""
        ex = self.ex
        ex.flag, ex.variant, ex.flag_version = route.flag, route.variant, route.flag_version
        ex.reason, ex.served_model = route.reason, route.served_model
        if route.reason != "static":
            metrics = self.r.metrics
            metrics.assignments.labels(route.flag, route.variant, route.reason).inc()
            if unit_from == "app":
                metrics.without_unit.labels(route.flag).inc()
        for o in self.r.observers:
            o.routed(ex)

    def fallback(self, failed: Route, control: Route) -> None:
        """`failed`'s pool is down: the request goes to the flag's control instead."""
        self.r.upstream_metrics.fallbacks.labels(failed.flag, failed.variant).inc()
        ex = self.ex
        ex.flag, ex.variant, ex.flag_version = control.flag, control.variant, control.flag_version
        ex.reason, ex.served_model = control.reason, control.served_model
        ex.fallback = True

    def sending(self, route: Route | ShadowRoute, headers: dict[str, str]) -> None:
        """The upstream call starts (tracing puts its span's context in `headers`)."""

    def first_byte(self, url: str) -> None:
        """The upstream at `url` answered."""
        self.ex.endpoint = url
        for o in self.r.observers:
            o.first_byte(self.ex)

    def upstream_error(self, pool: str, kind: str) -> None:
        """The upstream failed in this way (timeout, bad_response, midstream, http_5xx, ...)."""
        self.r.upstream_metrics.errors.labels(pool, kind).inc()

    def response_id(self, upstream_id: str, pair: str | None = None) -> str:
        """The signed id that replaces the upstream's `id`: minted here and only here.

        `pair`: a shadow's, its primary's nonce (the signed pair claim, gateway.ids).
        """
        ex = self.ex
        ex.upstream_id = upstream_id
        claims = Claims(
            flag=ex.flag or None,
            variant=ex.variant or None,
            flag_version=ex.flag_version,
            app=ex.app_id,
            unit=self.r.unit_hash(ex),
            time=int(ex.started_at),
            nonce=new_nonce(upstream_id),
            pair=pair,
        )
        ex.response_id = self.r.signer.sign(claims)
        return ex.response_id

    def content(self, now: float, started: float) -> bool:
        """A chunk carried content: time to first token, then inter-token latency."""
        last = self._last
        self._last = now
        if last is None:
            self.ex.ttft_s = now - started
            return True
        rm = self.rm
        if rm is None:
            ex = self.ex
            # The labels as they are at the first gap (a failed request may blank them later).
            rm = self.rm = self.r.metrics.route(ex.flag, ex.variant, ex.model, self.label, ex.role)
        gap = now - last
        bounds = self.r.itl_bounds
        if bounds is None:
            rm.itl.observe(gap)
            return False
        gaps = self._gaps
        if gaps is None:
            gaps = self._gaps = [0] * len(bounds)
        gaps[bisect_left(bounds, gap)] += 1
        self._gaps_s += gap
        return False

    def _add_gaps(self) -> None:
        """The stream's inter-token gaps into the histogram, as observing each would have."""
        gaps, rm = self._gaps, self.rm
        if gaps is None or rm is None:
            return
        self._gaps = None
        child = rm.itl
        child._sum.inc(self._gaps_s)
        for bucket, count in zip(child._buckets, gaps, strict=True):
            if count:
                bucket.inc(count)

    def chunk(self, data: bytes) -> None:
        """A piece of the stream went to the client."""
        for o in self.r.chunk_observers:
            o.chunk(self.ex, data)

    def failed(self, status: str, http_status: int, error: str | None) -> None:
        """The request ends in an error or was cancelled; unknown names never become labels."""
        ex = self.ex
        ex.status, ex.http_status, ex.error = status, http_status, error
        if status == "error" and (not ex.model or not ex.flag):
            ex.model = ex.flag = ex.variant = ""

    def finished(self, started: float, ended: float | None = None) -> None:
        """The request is over: metrics, the completion event, observers.

        `ended`: when the answer ended, if earlier than now (a shadow waits for its pair).
        """
        ex = self.ex
        ex.latency_s = (time.perf_counter() if ended is None else ended) - started
        self._metrics()
        if ex.flag and (ex.pair_of or ex.role == "primary"):
            self.r.emit_completion(ex)
        for o in self.r.observers:
            o.finished(ex)

    def _metrics(self) -> None:
        self._add_gaps()
        ex, m = self.ex, self.r.metrics
        key = (ex.flag, ex.variant, ex.model, self.label, ex.role)
        rm = m.route(*key)
        m.requests_child(rm, key, ex.http_status).inc()
        rm.duration.observe(ex.latency_s)
        if ex.role == "primary":  # a shadow is no client's request (Recorder.begin_shadow)
            m.in_flight_by_route[self.label].dec()
            m.observe_overhead(self.label, ex)
            if ex.status == "cancelled":
                rm.cancelled.inc()
        if ex.ttft_s is not None:
            rm.ttft.observe(ex.ttft_s)
        if ex.prompt_tokens:
            rm.tokens_in.inc(ex.prompt_tokens)
        if ex.completion_tokens:
            rm.tokens_out.inc(ex.completion_tokens)


class TracedRecording(Recording):
    """A Recording that also keeps the request's spans."""

    __slots__ = ("trace",)

    def __init__(self, recorder: Recorder, ex: Exchange, label: str, trace: RequestTrace) -> None:
        super().__init__(recorder, ex, label)
        self.trace = trace

    def routing(self, model: str) -> None:
        """Flag evaluation starts: its span."""
        self.trace.routing(model)

    def routed(self, route: Route, unit_from: str) -> None:
        """The route is chosen: flag attributes on the spans."""
        super().routed(route, unit_from)
        self.trace.routed(self.ex, self.ex.request)

    def sending(self, route: Route | ShadowRoute, headers: dict[str, str]) -> None:
        """The upstream span; its context replaces the caller's in `headers`."""
        self.trace.upstream(route.served_model, route.pool.name, headers)

    def first_byte(self, url: str) -> None:
        """The endpoint that answered, on the upstream span."""
        super().first_byte(url)
        self.trace.connected(url)

    def finished(self, started: float, ended: float | None = None) -> None:
        """Metrics and event as without tracing, the hand-off in its own span, then the end."""
        ex = self.ex
        ex.latency_s = (time.perf_counter() if ended is None else ended) - started
        self._metrics()
        if ex.flag and (ex.pair_of or ex.role == "primary"):
            sink = self.trace.sink()
            self.r.emit_completion(ex)
            sink.end()
        self.trace.end(ex)
        for o in self.r.observers:
            o.finished(ex)


class _Guarded:
    """An observer whose failures are logged, never raised into the request path."""

    __slots__ = ("_o",)

    def __init__(self, observer: RequestObserver) -> None:
        self._o = observer

    def _failed(self, moment: str) -> None:
        log.exception("observer %s failed at %s", type(self._o).__name__, moment)

    def started(self, ex: Exchange) -> None:
        try:
            self._o.started(ex)
        except Exception:
            self._failed("started")

    def routed(self, ex: Exchange) -> None:
        try:
            self._o.routed(ex)
        except Exception:
            self._failed("routed")

    def first_byte(self, ex: Exchange) -> None:
        try:
            self._o.first_byte(ex)
        except Exception:
            self._failed("first_byte")

    def chunk(self, ex: Exchange, data: bytes) -> None:
        try:
            self._o.chunk(ex, data)
        except Exception:
            self._failed("chunk")

    def finished(self, ex: Exchange) -> None:
        try:
            self._o.finished(ex)
        except Exception:
            self._failed("finished")

    def feedback_received(self, body: FeedbackBody) -> None:
        try:
            self._o.feedback_received(body)
        except Exception:
            self._failed("feedback_received")


def audit_writer(events: EventPipeline | None, instance: str) -> AuditSink:
    """The flag store's audit sink: logged, and written as an audit event when events are on."""

    def audit(record: AuditRecord) -> None:
        log_audit(record)
        if events is not None:
            events.emit(audit_event(record, instance=instance))

    return audit


def _bucket_bounds(histogram: Any) -> tuple[float, ...] | None:
    """A prometheus_client histogram's bucket bounds (+Inf last), where its children keep one
    count per bucket and a sum (`_buckets`, `_sum`, as observe fills them); else None."""
    bounds = getattr(histogram, "_upper_bounds", None)
    child_init = getattr(type(histogram), "_metric_init", None)
    code = getattr(child_init, "__code__", None)
    if not bounds or code is None or not {"_buckets", "_sum"} <= set(code.co_names):
        return None
    if bounds[-1] != float("inf") or list(bounds) != sorted(bounds):
        return None
    return tuple(bounds)


def _bounded(category: str) -> str:
    """Report categories are free text from apps; keep the metric label set bounded."""
    return category if category in REPORT_CATEGORIES else "other"
