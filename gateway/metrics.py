"""Metrics: Prometheus collectors on a registry the app owns (prefix loopgate_)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.runtime import Runtime

# Latency buckets sized for LLM calls: tens of ms to minutes.
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_TTFT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)

ROUTE_LABELS = ("flag", "variant", "model")
# Label sets are bounded by config (flags x variants x models); the cap only guards the cache.
_CHILD_CACHE_MAX = 4096


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

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._routes: dict[tuple[str, str, str, str], RouteMetrics] = {}
        r = self.registry
        self.requests = Counter(
            "loopgate_requests_total",
            "Requests answered, by route and HTTP status.",
            (*ROUTE_LABELS, "route", "status"),
            registry=r,
        )
        self.duration = Histogram(
            "loopgate_request_duration_seconds",
            "Time from request received to last byte sent.",
            (*ROUTE_LABELS, "route"),
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "loopgate_time_to_first_token_seconds",
            "Time from request received to the first content chunk sent.",
            ROUTE_LABELS,
            buckets=_TTFT,
            registry=r,
        )
        self.itl = Histogram(
            "loopgate_inter_token_latency_seconds",
            "Gap between content chunks of a stream.",
            ROUTE_LABELS,
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
        self.tokens = Counter(
            "loopgate_tokens_total",
            "Tokens in prompts (input) and answers (output).",
            (*ROUTE_LABELS, "direction"),
            registry=r,
        )
        self.upstream_errors = Counter(
            "loopgate_upstream_errors_total",
            "Upstream failures by pool and kind (connect, timeout, bad_response, midstream).",
            ("pool", "kind"),
            registry=r,
        )
        self.upstream_retries = Counter(
            "loopgate_upstream_retries_total",
            "Requests retried on another endpoint before any byte was sent.",
            ("pool",),
            registry=r,
        )
        self.in_flight = Gauge(
            "loopgate_requests_in_flight",
            "Requests being answered now.",
            ("route",),
            registry=r,
        )
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

    def route(self, flag: str, variant: str, model: str, route: str) -> RouteMetrics:
        """Children for these labels, cached so the hot path skips labels() lookups."""
        key = (flag, variant, model, route)
        found = self._routes.get(key)
        if found is None:
            if len(self._routes) >= _CHILD_CACHE_MAX:
                self._routes.clear()
            labels = (flag, variant, model)
            found = RouteMetrics(
                duration=self.duration.labels(*labels, route),
                ttft=self.ttft.labels(*labels),
                itl=self.itl.labels(*labels),
                tokens_in=self.tokens.labels(*labels, "input"),
                tokens_out=self.tokens.labels(*labels, "output"),
                cancelled=self.cancelled.labels(*labels, route),
                by_status={},
            )
            self._routes[key] = found
        return found

    def requests_child(self, rm: RouteMetrics, key: tuple[str, str, str, str], status: int) -> Any:
        """The requests counter child for a status, cached beside the route's children."""
        child = rm.by_status.get(status)
        if child is None:
            child = rm.by_status[status] = self.requests.labels(*key, str(status))
        return child

    def bind(self, runtime: Runtime) -> None:
        """Export the event pipeline's and the flag store's state at scrape time."""
        self.registry.register(_RuntimeCollector(runtime))


class _RuntimeCollector(Collector):
    """Reads pipeline counters and flag staleness when Prometheus scrapes."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        if rt.flags is not None:
            yield GaugeMetricFamily(
                "loopgate_flags_staleness_seconds",
                "Seconds since the flags in memory were last confirmed current (0 = fresh).",
                value=rt.flags.staleness_seconds(),
            )
            yield GaugeMetricFamily(
                "loopgate_flags_store_version",
                "Version of the flag snapshot being served.",
                value=rt.flags.snapshot().version,
            )
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
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        findings = CounterMetricFamily(
            "loopgate_redaction_findings",
            "Content redacted before leaving the process, by category.",
            labels=["category"],
        )
        for category, count in sorted(stats.findings.items()):
            findings.add_metric([category], count)
        yield findings
