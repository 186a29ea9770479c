"""Upstream pools: one pooled keep-alive client per process, retry before the first byte."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from gateway.balancer import (
    BalancerMetrics,
    Breaker,
    EndpointCollector,
    EndpointLoad,
    Watcher,
    order,
)
from gateway.config import BalancerConfig, PoolConfig
from gateway.errors import BadGateway, UpstreamTimeout, UpstreamUnavailable
from gateway.httpclient import (
    ClientError,
    ConnectError,
    ConnectTimeout,
    HttpClient,
    Origin,
    Response,
    Timeouts,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Endpoint:
    """One upstream server and what this process knows about its load and health."""

    url: str
    pool: str
    breaker: Breaker
    origin: Origin
    in_flight: int = 0
    last_failure: float = 0.0
    healthy: bool = True  # active health checks pass (or none ran yet)
    health_failures: int = 0  # consecutive failed checks; `unhealthy_after` of them mark it down
    latency: float = 0.0  # moving average of time to first token (or whole answer); 0: unknown
    latency_at: float = 0.0
    load: EndpointLoad = field(default_factory=EndpointLoad)
    metrics_supported: bool = True

    @property
    def failures(self) -> int:
        """Consecutive failures seen by the breaker."""
        return self.breaker.failures

    def observe_latency(self, seconds: float, alpha: float) -> None:
        """Fold one latency sample into the moving average."""
        self.latency = (
            seconds if self.latency <= 0 else self.latency + alpha * (seconds - self.latency)
        )
        self.latency_at = time.monotonic()


@dataclass(eq=False)
class Pool:
    """Endpoints serving one model, chosen by expected wait; broken ones are left out."""

    name: str
    config: PoolConfig
    endpoints: list[Endpoint]
    timeouts: Timeouts
    authorization: str | None = None
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    _rr: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def build(cls, name: str, config: PoolConfig, balancer: BalancerConfig | None = None) -> Pool:
        """Pool from its config section."""
        b = balancer or BalancerConfig()
        t = config.timeouts
        # `read` bounds the wait for the first byte and every gap between chunks after it.
        timeouts = Timeouts(connect=t.connect, read=t.first_byte, total=t.total)
        key = config.api_key.get_secret_value() if config.api_key else None
        endpoints = [
            Endpoint(url, name, Breaker(b.failure_threshold, b.cooldown_s), Origin.parse(url))
            for url in config.endpoints
        ]
        return cls(name, config, endpoints, timeouts, f"Bearer {key}" if key else None, b)

    def candidates(self) -> list[Endpoint]:
        """Endpoints to try, best first: healthy, breaker letting requests through.

        Failed health checks alone never empty a pool: when every endpoint fails them, the
        ones whose breakers allow traffic are tried anyway (fail static). A dead endpoint
        refuses fast, so traffic still falls back to control; a probe that merely timed out
        on a loaded machine costs nothing.
        """
        now = time.monotonic()
        allowed = [ep for ep in self.endpoints if ep.breaker.allows(now)]
        usable = [ep for ep in allowed if ep.healthy] or allowed
        if len(usable) <= 1:
            return usable
        return order(self, usable, next(self._rr))

    def usable(self) -> bool:
        """True when some endpoint may take a request now."""
        now = time.monotonic()
        return any(ep.healthy and ep.breaker.allows(now) for ep in self.endpoints)


class UpstreamCall:
    """An upstream response whose headers have arrived; release() when done with it."""

    __slots__ = ("_alpha", "_open", "_timed", "endpoint", "response", "started")

    def __init__(
        self, endpoint: Endpoint, response: Response, started: float, alpha: float
    ) -> None:
        self.endpoint = endpoint
        self.response = response
        self.started = started
        self._alpha = alpha
        self._open = True
        self._timed = False

    def first_token(self) -> None:
        """The first content arrived: its delay is the endpoint's latency sample."""
        if not self._timed:
            self._timed = True
            self.endpoint.observe_latency(time.perf_counter() - self.started, self._alpha)

    def release(self) -> None:
        """Return the connection to the pool once the body has been read."""
        if self._open:
            self._open = False
            self.first_token()  # a whole answer: its full time is the sample
            self.endpoint.in_flight -= 1
            self.endpoint.breaker.end_trial()
            self.response.release()

    def abort(self) -> None:
        """Close the connection so the upstream sees the request cancelled."""
        if self._open:
            self._open = False
            self.endpoint.in_flight -= 1
            self.endpoint.breaker.end_trial()
            self.response.close()

    def fail(self) -> None:
        """The upstream broke its answer (dropped, stalled, garbage): count it, then abort."""
        if self._open:
            Upstreams.failed(self.endpoint, "broken answer")
        self.abort()


class Upstreams:
    """All pools of this process over one shared connection pool."""

    def __init__(
        self,
        client: HttpClient,
        pools: dict[str, Pool],
        metrics: BalancerMetrics | None = None,
    ) -> None:
        self.client = client
        self.pools = pools
        self.metrics = metrics or BalancerMetrics(None)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        configs: Mapping[str, PoolConfig],
        balancer: BalancerConfig | None = None,
        registry: CollectorRegistry | None = None,
    ) -> AsyncIterator[Upstreams]:
        """Create the shared client and the endpoint watcher for the lifespan of the app."""
        b = balancer or BalancerConfig()
        client = HttpClient()
        pools = {name: Pool.build(name, cfg, b) for name, cfg in configs.items()}
        collector = EndpointCollector(pools)
        if registry is not None:
            registry.register(collector)
        metrics = BalancerMetrics(registry, list(pools))
        watcher = Watcher(client, pools, b)
        watcher.start()
        try:
            yield cls(client, pools, metrics)
        finally:
            await watcher.aclose()
            if registry is not None:
                # The app may start again on the same registry (tests do): free the names.
                registry.unregister(collector)
                for counter in metrics.collectors():
                    registry.unregister(counter)
            await client.aclose()

    async def send(
        self,
        pool: Pool,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        stream: bool = False,
        *,
        once: bool = False,
    ) -> UpstreamCall:
        """POST to the first endpoint that answers; retry others only before any response byte.

        `once`: one endpoint, no retry at all (a shadow call, gateway.shadow).
        """
        last_error: BaseException | None = None
        candidates = pool.candidates()
        if once:
            candidates = candidates[:1]
        for endpoint in candidates:
            if last_error is not None:
                self.metrics.retries.labels(pool.name).inc()
            endpoint.in_flight += 1
            endpoint.breaker.begin()
            started = time.perf_counter()
            try:
                response = await self.client.request(
                    "POST",
                    endpoint.origin,
                    path,
                    body=body,
                    headers=headers.items(),
                    timeouts=pool.timeouts,
                    stream=stream,
                )
            except (ConnectError, ConnectTimeout) as exc:
                # Nothing was answered: safe to try another endpoint.
                endpoint.in_flight -= 1
                self._count_failure(pool, endpoint, exc, kind="connect")
                last_error = exc
                continue
            except TimeoutError as exc:
                endpoint.in_flight -= 1
                self._count_failure(pool, endpoint, exc, kind="timeout")
                waited = pool.config.timeouts.first_byte
                raise UpstreamTimeout(
                    f"upstream {pool.name} did not answer within {waited:g}s"
                ) from exc
            except ClientError as exc:
                endpoint.in_flight -= 1
                self._count_failure(pool, endpoint, exc, kind="bad_response")
                raise BadGateway(f"upstream {pool.name} failed: {exc.__class__.__name__}") from exc
            except BaseException:
                endpoint.in_flight -= 1
                endpoint.breaker.end_trial()
                raise
            if response.status >= 500:
                # Counted by kind once the body is read (the proxy sees what it was).
                self._count_failure(pool, endpoint, None, f"HTTP {response.status}")
            else:
                endpoint.breaker.success()
            return UpstreamCall(endpoint, response, started, pool.balancer.latency_alpha)
        if last_error is None:
            reason = "every endpoint is down or its circuit breaker is open"
        else:
            reason = last_error.__class__.__name__
        raise UpstreamUnavailable(
            f"no endpoint of pool {pool.name} is reachable ({reason})"
        ) from last_error

    def _count_failure(
        self,
        pool: Pool,
        endpoint: Endpoint,
        exc: BaseException | None,
        what: str = "",
        *,
        kind: str | None = None,
    ) -> None:
        if kind is not None:
            self.metrics.errors.labels(pool.name, kind).inc()
        if self.failed(endpoint, what or (exc.__class__.__name__ if exc else "failure")):
            self.metrics.breaker_opens.labels(pool.name).inc()

    @staticmethod
    def failed(endpoint: Endpoint, what: str) -> bool:
        """Count a failure against the endpoint; True when its breaker opened."""
        now = time.monotonic()
        endpoint.last_failure = now
        opened = endpoint.breaker.failure(now)
        if opened:
            log.warning("upstream %s: circuit breaker open after %s", endpoint.url, what)
        else:
            log.warning("upstream %s failed: %s", endpoint.url, what)
        return opened

    async def probe(self, pool: Pool, deadline: float = 1.0) -> bool:
        """True when at least one endpoint of the pool answers its /health."""
        for endpoint in pool.endpoints:
            try:
                status, _ = await self.client.fetch(endpoint.origin, "/health", deadline)
            except (ClientError, TimeoutError):
                continue
            if status == 200:
                return True
        return False
