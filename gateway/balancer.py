"""Endpoint choice within a pool, circuit breaking, and the task that watches every endpoint.

Choice is "least expected wait": (requests ahead of us + 1) x the endpoint's recent latency.
Requests ahead are the gateway's own in-flight count (exact, now) plus what vLLM's /metrics
says the endpoint is running and queueing for others (other replicas), as of the last poll;
a nearly full KV cache adds a penalty. Least in-flight alone is not enough: under steady
concurrency it keeps a slow endpoint as busy as the fast ones, so its slowness becomes the
pool's p99. Weighting by latency starves the slow one until it speeds up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import BalancerConfig
from gateway.httpclient import ClientError, HttpClient

if TYPE_CHECKING:
    from gateway.upstream import Endpoint, Pool

log = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
BREAKER_STATES = (CLOSED, HALF_OPEN, OPEN)
# Kinds of loopgate_upstream_errors_total (each pool's series exist at 0 from the start).
ERROR_KINDS = ("connect", "timeout", "bad_response", "midstream", "http_4xx", "http_5xx")
# Latency samples older than this start to fade (see Watcher._forget_old_latencies).
LATENCY_MEMORY_S = 10.0

# Samples of the three gauges, whatever their labels (one line per served model).
_GAUGES = re.compile(
    rb"^vllm:(num_requests_running|num_requests_waiting|kv_cache_usage_perc)(?:\{[^}]*\})?"
    rb" ([0-9.eE+-]+|NaN)\s*$",
    re.MULTILINE,
)


@dataclass(slots=True)
class EndpointLoad:
    """What an endpoint's /metrics said at the last poll."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    own_at_poll: int = 0  # the gateway's own in-flight count when the poll answered
    at: float = 0.0


def parse_vllm_metrics(text: bytes) -> EndpointLoad | None:
    """Running, waiting and KV use summed over models; None when vLLM's gauges are absent."""
    load = EndpointLoad()
    seen = False
    for name, raw in _GAUGES.findall(text):
        try:
            value = float(raw)
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        seen = True
        if name == b"num_requests_running":
            load.running += value
        elif name == b"num_requests_waiting":
            load.waiting += value
        else:
            load.kv_usage = max(load.kv_usage, value)
    return load if seen else None


def expected_wait(ep: Endpoint, default_latency: float, kv_threshold: float) -> float:
    """(requests ahead + 1) x latency, with a penalty for a nearly full KV cache."""
    load = ep.load
    others = max(0.0, load.running + load.waiting - load.own_at_poll)
    ahead = ep.in_flight + others
    latency = ep.latency or default_latency
    cost = (ahead + 1) * latency
    if load.kv_usage > kv_threshold:
        cost *= 1 + 10 * (load.kv_usage - kv_threshold)
    return cost


def order(pool: Pool, endpoints: Sequence[Endpoint], start: int) -> list[Endpoint]:
    """Usable endpoints, best first; `start` rotates among equals."""
    n = len(endpoints)
    rotated = [endpoints[(start + i) % n] for i in range(n)]
    strategy = pool.balancer.strategy
    if strategy == "round_robin":
        return rotated
    if strategy == "least_in_flight":
        return sorted(rotated, key=_in_flight)
    known = [ep.latency for ep in endpoints if ep.latency > 0]
    default = min(known) if known else 1.0
    threshold = pool.balancer.kv_threshold
    return sorted(rotated, key=lambda ep: expected_wait(ep, default, threshold))


def _in_flight(ep: Endpoint) -> int:
    return ep.in_flight


class Breaker:
    """Per-endpoint circuit breaker: closed, open after N failures, half-open for one trial."""

    __slots__ = ("cooldown_s", "failures", "opened_at", "state", "threshold", "trial")

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trial = False

    def allows(self, now: float) -> bool:
        """May a request go here now? Turns open into half-open once the cool-down is over."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
            self.trial = False
        return self.state == HALF_OPEN and not self.trial

    def begin(self) -> None:
        """A request is going out; in half-open it is the one trial."""
        if self.state == HALF_OPEN:
            self.trial = True

    def success(self) -> None:
        """The endpoint answered: close."""
        self.failures = 0
        self.state = CLOSED
        self.trial = False

    def failure(self, now: float) -> bool:
        """The endpoint failed; True when this opened the breaker."""
        self.failures += 1
        self.trial = False
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self.state = OPEN
            self.opened_at = now
            return True
        return False

    def end_trial(self) -> None:
        """The trial ended without a verdict (the client left): let another one try."""
        self.trial = False


class BalancerMetrics:
    """Fallback counter plus endpoint state read at scrape time."""

    def __init__(self, registry: CollectorRegistry | None, pools: Sequence[str] = ()) -> None:
        self.fallbacks = Counter(
            "loopgate_fallbacks_total",
            "Requests sent to the flag's control variant because their variant's pool was down.",
            ("flag", "variant"),
            registry=registry,
        )
        self.errors = Counter(
            "loopgate_upstream_errors_total",
            "Upstream failures by pool and kind (connect, timeout, bad_response, midstream, ...).",
            ("pool", "kind"),
            registry=registry,
        )
        self.retries = Counter(
            "loopgate_upstream_retries_total",
            "Requests retried on another endpoint before any byte was sent.",
            ("pool",),
            registry=registry,
        )
        self.breaker_opens = Counter(
            "loopgate_upstream_breaker_opens_total",
            "Times an endpoint's circuit breaker opened.",
            ("pool",),
            registry=registry,
        )
        # Known from the config: a series at 0 per pool, so increase() sees the first error.
        for pool in pools:
            self.retries.labels(pool)
            for kind in ERROR_KINDS:
                self.errors.labels(pool, kind)

    def collectors(self) -> tuple[Counter, ...]:
        """Every counter here (to unregister them when the app stops)."""
        return (self.fallbacks, self.errors, self.retries, self.breaker_opens)


class EndpointCollector(Collector):
    """Breaker state, health and load of every endpoint (labels bounded by config)."""

    def __init__(self, pools: dict[str, Pool]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "loopgate_upstream_circuit_state",
            "1 for the circuit breaker's current state (closed, half_open, open) per endpoint.",
            labels=["pool", "endpoint", "state"],
        )
        healthy = GaugeMetricFamily(
            "loopgate_upstream_endpoint_healthy",
            "1 while the endpoint's active health check passes.",
            labels=["pool", "endpoint"],
        )
        queue = GaugeMetricFamily(
            "loopgate_upstream_endpoint_queue",
            "Requests running plus waiting on the endpoint at the last /metrics poll.",
            labels=["pool", "endpoint"],
        )
        for pool in self.pools.values():
            for ep in pool.endpoints:
                labels = [pool.name, ep.url]
                for name in BREAKER_STATES:
                    state.add_metric([*labels, name], 1 if ep.breaker.state == name else 0)
                healthy.add_metric(labels, 1 if ep.healthy else 0)
                queue.add_metric(labels, ep.load.running + ep.load.waiting)
        yield state
        yield healthy
        yield queue


class Watcher:
    """One named background task: polls /metrics and /health of every endpoint."""

    def __init__(self, client: HttpClient, pools: dict[str, Pool], config: BalancerConfig) -> None:
        self.client = client
        self.config = config
        self.pools = list(pools.values())
        self.endpoints = [ep for pool in self.pools for ep in pool.endpoints]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching, if there is anything to poll."""
        c = self.config
        if self.endpoints and (c.metrics_interval_s > 0 or c.health_interval_s > 0):
            self._task = asyncio.create_task(self._run(), name="loopgate-upstream-watch")

    async def aclose(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        c = self.config
        tick = min(i for i in (c.metrics_interval_s, c.health_interval_s) if i > 0)
        next_metrics = next_health = 0.0
        while True:
            now = time.monotonic()
            jobs = []
            if c.metrics_interval_s > 0 and now >= next_metrics:
                next_metrics = now + c.metrics_interval_s
                jobs += [self._poll_metrics(ep) for ep in self.endpoints if ep.metrics_supported]
            if c.health_interval_s > 0 and now >= next_health:
                next_health = now + c.health_interval_s
                jobs += [self._check_health(ep) for ep in self.endpoints]
            if jobs:
                await asyncio.gather(*jobs)
            self._forget_old_latencies(time.monotonic())
            await asyncio.sleep(tick)

    def _forget_old_latencies(self, now: float) -> None:
        # A starved endpoint gets no new samples: let its latency drift back to the pool's
        # best so it is tried again and can show it has recovered.
        for pool in self.pools:
            known = [ep.latency for ep in pool.endpoints if ep.latency > 0]
            if not known:
                continue
            best = min(known)
            for ep in pool.endpoints:
                if ep.latency > best and now - ep.latency_at > LATENCY_MEMORY_S:
                    ep.latency = max(best, ep.latency * 0.8)

    async def _get(self, ep: Endpoint, path: str) -> tuple[int, bytes]:
        return await self.client.fetch(ep.origin, path, self.config.probe_timeout_s)

    async def _poll_metrics(self, ep: Endpoint) -> None:
        try:
            status, text = await self._get(ep, "/metrics")
        except (ClientError, TimeoutError, OSError):
            return  # health checks and requests judge reachability; this only tunes choice
        if status == 404:
            ep.metrics_supported = False  # not vLLM: stop asking
            return
        load = parse_vllm_metrics(text) if status == 200 else None
        if load is not None:
            load.own_at_poll = ep.in_flight
            load.at = time.monotonic()
            ep.load = load

    async def _check_health(self, ep: Endpoint) -> None:
        try:
            status, _ = await self._get(ep, "/health")
            ok = status == 200
        except (ClientError, TimeoutError, OSError):
            ok = False
        ep.health_failures = 0 if ok else ep.health_failures + 1
        healthy = ok or (ep.healthy and ep.health_failures < self.config.unhealthy_after)
        if healthy != ep.healthy:
            log.warning("upstream %s health check %s", ep.url, "passes" if ok else "fails")
        ep.healthy = healthy
        if not healthy:
            # Requests answered long ago say nothing now: forget the latency when it comes back.
            ep.latency = 0.0
