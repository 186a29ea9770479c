"""Upstream pools: one pooled keep-alive aiohttp client per process, retry before the first byte."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from gateway.errors import BadGateway, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import PoolConfig

log = logging.getLogger(__name__)

# Failures that happen before the upstream said anything: safe to try another endpoint.
_NOT_STARTED = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)


@dataclass(eq=False)
class Endpoint:
    """One upstream server and what this process knows about its load and health."""

    url: str
    pool: str
    in_flight: int = 0
    failures: int = 0
    last_failure: float = 0.0

    def healthy(self) -> bool:
        """A recently failing endpoint is tried last, not never (it may be back)."""
        return self.failures == 0


@dataclass(eq=False)
class Pool:
    """Endpoints serving one model, chosen least-loaded first."""

    name: str
    config: PoolConfig
    endpoints: list[Endpoint]
    timeout: aiohttp.ClientTimeout
    authorization: str | None = None
    _rr: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def build(cls, name: str, config: PoolConfig) -> Pool:
        """Pool from its config section."""
        t = config.timeouts
        # sock_read bounds the wait for the first byte and every gap between chunks after it.
        timeout = aiohttp.ClientTimeout(
            total=t.total, sock_connect=t.connect, sock_read=t.first_byte
        )
        key = config.api_key.get_secret_value() if config.api_key else None
        endpoints = [Endpoint(url, name) for url in config.endpoints]
        return cls(name, config, endpoints, timeout, f"Bearer {key}" if key else None)

    def candidates(self) -> list[Endpoint]:
        """Endpoints in the order to try: healthy before failing, fewest in flight first."""
        eps = self.endpoints
        if len(eps) == 1:
            return eps
        start = next(self._rr) % len(eps)
        rotated = eps[start:] + eps[:start]  # round-robin among equals
        return sorted(rotated, key=lambda e: (not e.healthy(), e.in_flight))


class UpstreamCall:
    """An upstream response whose headers have arrived; release() when done with it."""

    __slots__ = ("_open", "endpoint", "response", "started")

    def __init__(
        self, endpoint: Endpoint, response: aiohttp.ClientResponse, started: float
    ) -> None:
        self.endpoint = endpoint
        self.response = response
        self.started = started
        self._open = True

    def release(self) -> None:
        """Return the connection to the pool once the body has been read."""
        if self._open:
            self._open = False
            self.endpoint.in_flight -= 1
            self.response.release()

    def abort(self) -> None:
        """Close the connection so the upstream sees the request cancelled."""
        if self._open:
            self._open = False
            self.endpoint.in_flight -= 1
            self.response.close()


class Upstreams:
    """All pools of this process over one shared connection pool."""

    def __init__(self, session: aiohttp.ClientSession, pools: dict[str, Pool]) -> None:
        self.session = session
        self.pools = pools

    @classmethod
    @asynccontextmanager
    async def open(cls, configs: Mapping[str, PoolConfig]) -> AsyncIterator[Upstreams]:
        """Create the shared client for the lifespan of the app."""
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        session = aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            auto_decompress=False,
        )
        try:
            yield cls(session, {name: Pool.build(name, cfg) for name, cfg in configs.items()})
        finally:
            await session.close()

    async def send(
        self, pool: Pool, path: str, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamCall:
        """POST to the first endpoint that answers; retry others only before any response byte."""
        last_error: BaseException | None = None
        for endpoint in pool.candidates():
            endpoint.in_flight += 1
            started = time.perf_counter()
            try:
                response = await self.session.post(
                    endpoint.url + path, data=body, headers=headers, timeout=pool.timeout
                )
            except _NOT_STARTED as exc:
                endpoint.in_flight -= 1
                self._failed(endpoint, exc)
                last_error = exc
                continue
            except TimeoutError as exc:
                endpoint.in_flight -= 1
                if isinstance(exc, aiohttp.ConnectionTimeoutError):
                    self._failed(endpoint, exc)
                    last_error = exc
                    continue
                waited = pool.config.timeouts.first_byte
                raise UpstreamTimeout(
                    f"upstream {pool.name} did not answer within {waited:g}s"
                ) from exc
            except aiohttp.ClientError as exc:
                endpoint.in_flight -= 1
                self._failed(endpoint, exc)
                raise BadGateway(f"upstream {pool.name} failed: {exc.__class__.__name__}") from exc
            except BaseException:
                endpoint.in_flight -= 1
                raise
            endpoint.failures = 0
            return UpstreamCall(endpoint, response, started)
        reason = last_error.__class__.__name__ if last_error else "no endpoints"
        raise UpstreamUnavailable(
            f"no endpoint of pool {pool.name} is reachable ({reason})"
        ) from last_error

    @staticmethod
    def _failed(endpoint: Endpoint, exc: BaseException) -> None:
        endpoint.failures += 1
        endpoint.last_failure = time.monotonic()
        log.warning("upstream %s unreachable: %s", endpoint.url, exc.__class__.__name__)

    async def probe(self, pool: Pool, deadline: float = 1.0) -> bool:
        """True when at least one endpoint of the pool answers its /health."""
        for endpoint in pool.endpoints:
            try:
                async with self.session.get(
                    endpoint.url + "/health", timeout=aiohttp.ClientTimeout(total=deadline)
                ) as response:
                    if response.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                continue
        return False
