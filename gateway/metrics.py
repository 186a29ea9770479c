"""Metrics: Prometheus collectors on a registry the app owns (prefix loopgate_).

Under `loopgate serve --workers N` prometheus-client runs in multiprocess mode: every
value lives in a memory-mapped file under PROMETHEUS_MULTIPROC_DIR (which serve sets
before the workers start: the client picks its value class when prometheus_client.values
is first imported) and /metrics sums the files of all workers. State read at scrape time
(the event pipeline, flags, upstream endpoints) belongs to the worker that answers the
scrape, so in that mode each worker mirrors it into multiprocess collectors once a second
(and when it answers a scrape): counters add up over workers, gauges use the mode that
reads right for the sum of processes (see _GAUGE_MODES).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from feedback.redact import PLACEHOLDERS
from feedback.schema import TOPICS
from feedback.sinks.faults import DEAD_LETTER_REASONS

if TYPE_CHECKING:
    from feedback.emitter import EventPipeline
    from gateway.exchange import Exchange
    from gateway.settings import Settings
    from gateway.upstream import Upstreams
    from router.stores.base import FlagStore

log = logging.getLogger(__name__)


class Scraped(Protocol):
    """What the scrape-time collectors read (the app's Runtime, which imports this module)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def upstreams(self) -> Upstreams: ...
    @property
    def flags(self) -> FlagStore | None: ...
    @property
    def events(self) -> EventPipeline | None: ...


# Latency buckets sized for LLM calls: tens of ms to minutes.
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_TTFT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)

ROUTE_LABELS = ("flag", "variant", "model")
# Who a request series counts: the client's own request, or its unseen shadow (gateway.shadow).
ROLES = ("primary", "shadow")
# Why a shadow was not sent or not answered (loopgate_shadow_dropped_total); bounded.
SHADOW_DROP_REASONS = (
    "in_flight", "budget", "consent", "pool_unavailable", "timeout", "error", "shutdown",
    "primary_failed",
)  # fmt: skip
# Outcomes of the external safety classifier, and where a safety finding was made.
CLASSIFIER_OUTCOMES = ("ok", "error", "timeout", "dropped")
SAFETY_SOURCES = ("prompt", "answer")
# Label sets are bounded by config (flags x variants x models); the cap only guards the cache.
_CHILD_CACHE_MAX = 4096


# The report categories apps may name; any other is counted as `other` (bounded labels).
REPORT_CATEGORIES = frozenset(
    {"harmful", "hate", "harassment", "self_harm", "sexual", "violence", "privacy",
     "misinformation", "jailbreak", "spam", "other"}
)  # fmt: skip


@dataclass(slots=True)
class RouteMetrics:
    """Collector children for one (flag, variant, model, route), looked up once and reused."""

    duration: Any
    ttft: Any
    itl: Any
    tokens_in: Any
    tokens_out: Any
    cancelled: Any
    by_status: dict[int, Any]


class Metrics:
    """All gateway collectors; labels are bounded (flag, variant, model, route, status)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ) -> None:
        if (
            multiprocess_dir is not None
            and prometheus_values.ValueClass is prometheus_values.MutexValue
        ):
            raise RuntimeError(
                "multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set before prometheus_client "
                "is imported (loopgate serve sets it for its workers)"
            )
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        self._routes: dict[tuple[str, str, str, str, str], RouteMetrics] = {}
        self._mirror: _Mirror | None = None
        self._runtime: Scraped | None = None
        # Label values known from the config, made into series at 0 (see label_known).
        self.safety_categories: tuple[str, ...] = ()
        self.report_categories: tuple[str, ...] = ()
        self._labelled: tuple[int, tuple[str, ...], tuple[str, ...]] | None = None
        r = self.registry
        self.requests = Counter(
            "loopgate_requests_total",
            "Requests answered, by route and HTTP status (role: primary, or a shadow's call).",
            (*ROUTE_LABELS, "route", "status", "role"),
            registry=r,
        )
        self.duration = Histogram(
            "loopgate_request_duration_seconds",
            "Time from request received to last byte sent.",
            (*ROUTE_LABELS, "route", "role"),
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "loopgate_time_to_first_token_seconds",
            "Time from request received to the first content chunk sent.",
            (*ROUTE_LABELS, "role"),
            buckets=_TTFT,
            registry=r,
        )
        self.itl = Histogram(
            "loopgate_inter_token_latency_seconds",
            "Gap between content chunks of a stream.",
            (*ROUTE_LABELS, "role"),
            buckets=_ITL,
            registry=r,
        )
        self.overhead = Histogram(
            "loopgate_overhead_seconds",
            "Time the gateway itself spent on a request, upstream wait excluded.",
            ("route",),
            buckets=_OVERHEAD,
            registry=r,
        )
        self.overhead_by_route = {
            route: self.overhead.labels(route) for route in ("chat", "completions")
        }
        self.tokens = Counter(
            "loopgate_tokens_total",
            "Tokens in prompts (input) and answers (output).",
            (*ROUTE_LABELS, "direction", "role"),
            registry=r,
        )
        self.in_flight = Gauge(
            "loopgate_requests_in_flight",
            "Requests being answered now.",
            ("route",),
            registry=r,
            multiprocess_mode="livesum",
        )
        # The two proxy routes' children, looked up once rather than on every request.
        self.in_flight_by_route = {
            route: self.in_flight.labels(route) for route in ("chat", "completions")
        }
        self.without_unit = Counter(
            "loopgate_requests_without_unit_total",
            "Requests with neither a `user` field nor X-Loopgate-User (sticky per app only).",
            ("flag",),
            registry=r,
        )
        self.assignments = Counter(
            "loopgate_assignments_total",
            "Flag assignments by variant and the reason that decided them.",
            ("flag", "variant", "reason"),
            registry=r,
        )
        self.feedback = Counter(
            "loopgate_feedback_total",
            "Feedback recorded, by the flag and variant that produced the answer, and kind.",
            ("flag", "variant", "kind"),
            registry=r,
        )
        self.reports = Counter(
            "loopgate_safety_reports_total",
            "User `report` feedback by category.",
            ("flag", "variant", "category"),
            registry=r,
        )
        self.cancelled = Counter(
            "loopgate_client_disconnects_total",
            "Requests whose client went away before the answer ended.",
            (*ROUTE_LABELS, "route"),
            registry=r,
        )
        self.safety_findings = Counter(
            "loopgate_safety_findings_total",
            "Safety check findings on prompts and answers, by category.",
            ("flag", "variant", "category", "source"),
            registry=r,
        )
        self.safety_classifier = Counter(
            "loopgate_safety_classifier_calls_total",
            "External safety classifier calls by outcome (ok, error, timeout, dropped).",
            ("outcome",),
            registry=r,
        )
        self.shadow_dropped = Counter(
            "loopgate_shadow_dropped_total",
            "Shadow calls not sent, or sent and not answered, by flag and reason.",
            ("flag", "reason"),
            registry=r,
        )
        self.drift_psi = Gauge(
            "loopgate_drift_psi",
            "Population stability index of the recent profile against the frozen baseline.",
            ("flag", "variant", "feature"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_samples = Gauge(
            "loopgate_drift_window_samples",
            "Answers in the rolling drift window.",
            ("flag", "variant"),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.drift_baseline_time = Gauge(
            "loopgate_drift_baseline_timestamp_seconds",
            "When the drift baseline in use was frozen (Unix time).",
            ("flag", "variant"),
            registry=r,
            multiprocess_mode="livemax",
        )

    def route(
        self, flag: str, variant: str, model: str, route: str, role: str = "primary"
    ) -> RouteMetrics:
        """Children for these labels, cached so the hot path skips labels() lookups."""
        key = (flag, variant, model, route, role)
        found = self._routes.get(key)
        if found is None:
            if len(self._routes) >= _CHILD_CACHE_MAX:
                self._routes.clear()
            labels = (flag, variant, model)
            found = RouteMetrics(
                duration=self.duration.labels(*labels, route, role),
                ttft=self.ttft.labels(*labels, role),
                itl=self.itl.labels(*labels, role),
                tokens_in=self.tokens.labels(*labels, "input", role),
                tokens_out=self.tokens.labels(*labels, "output", role),
                cancelled=self.cancelled.labels(*labels, route),
                by_status={},
            )
            self._routes[key] = found
        return found

    def requests_child(
        self, rm: RouteMetrics, key: tuple[str, str, str, str, str], status: int
    ) -> Any:
        """The requests counter child for a status, cached beside the route's children."""
        child = rm.by_status.get(status)
        if child is None:
            flag, variant, model, route, role = key
            child = self.requests.labels(flag, variant, model, route, str(status), role)
            rm.by_status[status] = child
        return child

    def observe_overhead(self, route: str, ex: Exchange) -> None:
        """The gateway's own time on a finished request, upstream wait excluded.

        `ex.overhead_s` is what the answer's X-Loopgate-Overhead-Ms said; a request refused
        before any upstream was asked spent all its time here. Upstream failures and clients
        that left are not observed: their time is the upstream's or the client's.
        """
        overhead_s = ex.overhead_s
        if overhead_s is None:
            if ex.http_status == 499 or ex.http_status >= 500:
                return
            overhead_s = ex.latency_s
        self.overhead_by_route[route].observe(overhead_s)

    def bind(self, runtime: Scraped) -> None:
        """Export the event pipeline's, flags' and upstreams' state at scrape time."""
        self._runtime = runtime
        self.report_categories = tuple(sorted(REPORT_CATEGORIES))
        self.registry.register(_RuntimeCollector(runtime))
        if self.multiprocess_dir is not None:
            self._mirror = _Mirror()
        self.label_known()

    def label_known(self) -> None:
        """Make every series whose labels the config names exist at 0.

        A labelled counter has no series until its first increment: panels say "No data"
        instead of 0, and increase() misses the first event. Flags and variants come from
        the flag snapshot (again when its version changes), categories from the safety rules,
        the report categories and the redaction rules, pools from the config.
        """
        rt = self._runtime
        if rt is None:
            return
        routes: list[tuple[str, str]] = [
            (name, route.pool) for name, route in rt.settings.models.items()
        ]
        version = -1
        if rt.flags is not None:
            snapshot = rt.flags.snapshot()
            version = snapshot.version
            routes += [(f.key, v.name) for f in snapshot.flags.values() for v in f.variants]
        state = (version, self.safety_categories, self.report_categories)
        if state == self._labelled:
            return
        self._labelled = state
        for flag, variant in routes:
            for category in self.safety_categories:
                for source in SAFETY_SOURCES:
                    self.safety_findings.labels(flag, variant, category, source)
            for category in self.report_categories:
                self.reports.labels(flag, variant, category)
        for outcome in CLASSIFIER_OUTCOMES:
            self.safety_classifier.labels(outcome)
        if rt.flags is not None:
            for f in rt.flags.snapshot().flags.values():
                if f.shadow is not None:
                    for reason in SHADOW_DROP_REASONS:
                        self.shadow_dropped.labels(f.key, reason)

    def mirror(self) -> None:
        """Multiprocess mode: copy this worker's scrape-time state into shared collectors."""
        if self._mirror is None:
            return
        # Every collector on the registry that is not a multiprocess-backed metric reads
        # state at scrape time (ours, gateway.balancer's): copy what it reports now.
        for collector in list(self.registry._collector_to_names):
            if not isinstance(collector, MetricWrapperBase):
                self._mirror.sync(collector.collect())

    def exposition(self) -> bytes:
        """The /metrics page: this registry, or every worker's values summed."""
        self.label_known()
        if self.multiprocess_dir is None:
            return generate_latest(_WithoutCreated(self.registry))
        self.mirror()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    @asynccontextmanager
    async def mirroring(self, interval_s: float = 1.0) -> AsyncIterator[None]:
        """Multiprocess mode: mirror scrape-time state every interval; on exit, retire the pid."""
        if self.multiprocess_dir is None:
            yield
            return

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    self.mirror()
                except Exception:  # the edge: a failing collector must not stop the others
                    log.exception("metrics: mirroring scrape-time state failed")

        task = asyncio.create_task(loop(), name="loopgate-metrics-mirror")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # Live gauges of this worker go; its counters stay in the sums.
            mark_process_dead(os.getpid(), str(self.multiprocess_dir))  # type: ignore[no-untyped-call]


class _WithoutCreated(Collector):
    """The registry without the `_created` samples of counters and histograms.

    They double the series count and no dashboard or rule reads them; dropping them here
    leaves prometheus_client's process-wide switch alone.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.type in _WITH_CREATED:
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


_WITH_CREATED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def without_created(registry: CollectorRegistry) -> CollectorRegistry:
    """A registry that reads `registry` without its `_created` samples (to serve elsewhere)."""
    view = CollectorRegistry(auto_describe=False)
    view.register(_WithoutCreated(registry))
    return view


GaugeMode = Literal["livesum", "livemax", "livemin"]

# How each mirrored gauge reads across workers: queues and in-flight counts add up;
# staleness takes the worst worker; an endpoint is up only when every worker reaches it.
_GAUGE_MODES: dict[str, GaugeMode] = {
    "loopgate_flags_staleness_seconds": "livemax",
    "loopgate_flags_store_version": "livemin",
    "loopgate_upstream_endpoint_healthy": "livemin",
    "loopgate_upstream_circuit_state": "livemax",
    "loopgate_upstream_endpoint_queue": "livemax",
    "loopgate_events_mode": "livemax",
    "loopgate_flag_variant_weight": "livemax",
}


class _Mirror:
    """Copies scrape-time families into multiprocess collectors (counters by their delta).

    The copies are on no registry: their values live in the multiprocess files, and the
    scrape-time collectors keep their names on the app's registry.
    """

    def __init__(self) -> None:
        self._collectors: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._gauge_children: dict[str, set[tuple[str, ...]]] = {}

    def sync(self, families: Iterable[Metric]) -> None:
        """Apply the current values of these families."""
        for family in families:
            seen: set[tuple[str, ...]] = set()
            for sample in family.samples:
                if family.type == "counter" and not sample.name.endswith("_total"):
                    continue  # the _created sample
                labels = tuple(sample.labels)
                collector = self._collector(family, labels)
                values = tuple(sample.labels[k] for k in labels)
                child = collector.labels(*values) if labels else collector
                if family.type == "counter":
                    key = (family.name, values)
                    delta = sample.value - self._last.get(key, 0.0)
                    if delta > 0:
                        child.inc(delta)
                    self._last[key] = sample.value
                else:
                    child.set(sample.value)
                    seen.add(values)
            if family.type == "gauge":
                # A label set this worker no longer reports (the pipeline left a mode) reads 0.
                gone = self._gauge_children.get(family.name, set()) - seen
                collector = self._collectors.get(family.name)
                for values in gone:
                    if collector is not None:
                        collector.labels(*values).set(0)
                self._gauge_children[family.name] = seen | gone

    def _collector(self, family: Metric, labels: tuple[str, ...]) -> Any:
        found = self._collectors.get(family.name)
        if found is None:
            if family.type == "counter":
                found = Counter(family.name, family.documentation, labels, registry=None)
            else:
                mode = _GAUGE_MODES.get(family.name, "livesum")
                found = Gauge(
                    family.name,
                    family.documentation,
                    labels,
                    registry=None,
                    multiprocess_mode=mode,
                )
            self._collectors[family.name] = found
        return found


class _RuntimeCollector(Collector):
    """Reads pipeline counters and flag staleness when Prometheus scrapes."""

    def __init__(self, runtime: Scraped) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        yield from _endpoint_families(rt)
        if rt.flags is not None:
            yield GaugeMetricFamily(
                "loopgate_flags_staleness_seconds",
                "Seconds since the flags in memory were last confirmed current (0 = fresh).",
                value=rt.flags.staleness_seconds(),
            )
            snapshot = rt.flags.snapshot()
            yield GaugeMetricFamily(
                "loopgate_flags_store_version",
                "Version of the flag snapshot being served.",
                value=snapshot.version,
            )
            # Weight per variant, and which is the control: rules compare a variant with it.
            weights = GaugeMetricFamily(
                "loopgate_flag_variant_weight",
                "Configured traffic weight of each variant (control=true marks the control).",
                labels=["flag", "variant", "control"],
            )
            for flag in snapshot.flags.values():
                for variant in flag.variants:
                    control = "true" if variant.name == flag.control else "false"
                    weights.add_metric([flag.key, variant.name, control], variant.weight)
            yield weights
        if rt.events is None:
            return
        snap = rt.events.snapshot()
        stats = snap.stats
        gauges = {
            "loopgate_events_queue_depth": ("Events waiting for the sink.", snap.queue_depth),
            "loopgate_events_spool_buffer_depth": (
                "Events waiting for the spool writer.",
                snap.spool_buffer_depth,
            ),
            "loopgate_spool_bytes": ("Bytes in the local spool.", snap.spool_bytes),
            "loopgate_spool_pending_bytes": (
                "Spooled bytes not yet replayed to Kafka.",
                snap.spool_pending_bytes,
            ),
            "loopgate_spool_segments": ("Segment files in the spool.", snap.spool_segments),
            "loopgate_spool_max_bytes": ("The spool's size bound.", snap.spool_max_bytes),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        mode = GaugeMetricFamily(
            "loopgate_events_mode", "1 for the pipeline's current mode.", labels=["mode"]
        )
        mode.add_metric([snap.mode], 1)
        yield mode
        counters = {
            "loopgate_events_emitted": ("Events accepted from the request path.", stats.emitted),
            "loopgate_events_sent": ("Events acknowledged by Kafka directly.", stats.sent),
            "loopgate_events_spooled": ("Events written to the spool.", stats.spooled),
            "loopgate_events_replayed": ("Spooled events re-sent to Kafka.", stats.replayed),
            "loopgate_events_failed": ("Failed sink batch attempts.", stats.failed),
            "loopgate_events_dropped": ("Events lost (must stay 0).", stats.dropped),
            "loopgate_events_producer_restarts": (
                "Kafka producer processes started again after a crash, hang or bad reply.",
                snap.producer_restarts,
            ),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        findings = CounterMetricFamily(
            "loopgate_redaction_findings",
            "Content redacted before leaving the process, by category.",
            labels=["category"],
        )
        # Every category the redactor can report, at 0 until its first finding.
        counts = dict.fromkeys(_redaction_categories(rt), 0) | stats.findings
        for category, count in sorted(counts.items()):
            findings.add_metric([category], count)
        yield findings
        # Every topic and reason from the start, so a panel or an increase() sees 0, not nothing.
        truncated = CounterMetricFamily(
            "loopgate_events_truncated",
            "Events sent with their content cut to fit Kafka's record size limit.",
            labels=["topic"],
        )
        dead = CounterMetricFamily(
            "loopgate_events_dead_lettered",
            "Events Kafka can never take, set aside in the dead-letter spool.",
            labels=["topic", "reason"],
        )
        for topic in TOPICS:
            truncated.add_metric([topic], stats.truncated.get(topic, 0))
            for reason in DEAD_LETTER_REASONS:
                dead.add_metric([topic, reason], stats.dead_lettered.get((topic, reason), 0))
        yield truncated
        yield dead


def _redaction_categories(rt: Scraped) -> list[str]:
    redaction = rt.settings.events.redaction
    if not redaction.enabled:
        return []
    return [*PLACEHOLDERS, *redaction.patterns]


def _endpoint_families(rt: Scraped) -> Iterator[Metric]:
    # Health, breaker state and upstream queue come from gateway.balancer's collector.
    in_flight = GaugeMetricFamily(
        "loopgate_upstream_endpoint_in_flight",
        "Requests this gateway has open on the endpoint.",
        labels=["pool", "endpoint"],
    )
    for pool in rt.upstreams.pools.values():
        for endpoint in pool.endpoints:
            in_flight.add_metric([pool.name, endpoint.url], endpoint.in_flight)
    yield in_flight
