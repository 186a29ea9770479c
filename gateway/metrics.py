"""Metrics: Prometheus collectors on a registry the app owns (prefix loopgate_)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets sized for LLM calls: tens of ms to minutes.
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_TTFT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)

ROUTE_LABELS = ("flag", "variant", "model")


class Metrics:
    """All gateway collectors; labels are bounded (flag, variant, model, route, status)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
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
        self.cancelled = Counter(
            "loopgate_client_disconnects_total",
            "Requests whose client went away before the answer ended.",
            (*ROUTE_LABELS, "route"),
            registry=r,
        )
