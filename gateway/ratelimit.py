"""Per-app requests and tokens per minute: token buckets shared through one Redis script call.

Each request reserves one request and an estimate of its tokens (prompt bytes / 4 plus
max_tokens) atomically before the upstream call; the difference to the tokens it really used
is given back (or charged) afterwards, batched by a background task. When Redis is away the
limiter fails static: each replica keeps enforcing `local_share` of every limit on its own
(1.0 serves the full limit per replica: availability first; 1/replicas keeps the cluster
bound), and goes back to Redis once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.auth import AppPrincipal
from gateway.config import RateLimitConfig
from gateway.errors import RateLimited

log = logging.getLogger(__name__)

# Buckets refill continuously (limit per 60 s) and start full; TIME is Redis's clock, so
# replicas with skewed clocks agree. Floats go back as strings: Redis truncates Lua numbers.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'r', 'k', 't')
local r = tonumber(b[1])
local k = tonumber(b[2])
local last = tonumber(b[3])
if r == nil or last == nil then r = rpm; last = now end
if k == nil then k = tpm end
local dt = math.max(0, now - last)
if rpm > 0 then r = math.min(rpm, r + dt * rpm / 60000) end
if tpm > 0 then k = math.min(tpm, k + dt * tpm / 60000) end
local ok = 1
local wait = 0
if rpm > 0 and r < 1 then ok = 0; wait = math.max(wait, (1 - r) * 60000 / rpm) end
if tpm > 0 and k < cost then ok = 0; wait = math.max(wait, (cost - k) * 60000 / tpm) end
if ok == 1 then
  if rpm > 0 then r = r - 1 end
  if tpm > 0 then k = k - cost end
end
redis.call('HSET', KEYS[1], 'r', r, 'k', k, 't', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return {ok, tostring(r), tostring(k), math.ceil(wait)}
"""


class _Bucket:
    """A local token bucket pair (requests, tokens), the same arithmetic as the script."""

    __slots__ = ("k", "last", "r")

    def __init__(self, rpm: float, tpm: float, now: float) -> None:
        self.r, self.k, self.last = rpm, tpm, now

    def take(self, rpm: float, tpm: float, cost: float, now: float) -> tuple[bool, float]:
        dt = max(0.0, now - self.last) * 1000
        self.last = now
        if rpm > 0:
            self.r = min(rpm, self.r + dt * rpm / 60000)
        if tpm > 0:
            self.k = min(tpm, self.k + dt * tpm / 60000)
        wait = 0.0
        if rpm > 0 and self.r < 1:
            wait = max(wait, (1 - self.r) * 60000 / rpm)
        if tpm > 0 and self.k < cost:
            wait = max(wait, (cost - self.k) * 60000 / tpm)
        if wait > 0:
            return False, wait
        if rpm > 0:
            self.r -= 1
        if tpm > 0:
            self.k -= cost
        return True, 0.0


class Reservation:
    """What one request took from its app's buckets, and the headers that say so."""

    __slots__ = ("app_id", "cost", "headers", "shared", "tpm")

    def __init__(
        self, app_id: str, cost: int, tpm: int, shared: bool, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.app_id, self.cost, self.tpm, self.shared = app_id, cost, tpm, shared
        self.headers = headers


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _headers(rpm: int, tpm: int, r: float, k: float) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    if rpm > 0:
        out += [
            (b"x-ratelimit-limit-requests", str(rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, math.floor(r))).encode()),
            (b"x-ratelimit-reset-requests", _duration((rpm - r) * 60 / rpm).encode()),
        ]
    if tpm > 0:
        out += [
            (b"x-ratelimit-limit-tokens", str(tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, math.floor(k))).encode()),
            (b"x-ratelimit-reset-tokens", _duration((tpm - k) * 60 / tpm).encode()),
        ]
    return out


def estimate_tokens(body_bytes: int, max_tokens: int) -> int:
    """A request's token estimate: about 4 bytes a prompt token, plus what it may generate."""
    return body_bytes // 4 + max_tokens


class RateLimiter:
    """Reserve before the call, settle after; Redis when it answers, local buckets otherwise."""

    def __init__(self, config: RateLimitConfig, redis: Redis | None = None) -> None:
        self.config = config
        self._redis = redis
        self._script: Any = redis.register_script(_RESERVE) if redis is not None else None
        self._local: dict[str, _Bucket] = {}
        self._redis_down_until = 0.0
        # Per app: requests and tokens Redis last said were left, and when (monotonic).
        self._last_shared: dict[str, tuple[float, float, float]] = {}
        self._refunds: dict[str, float] = {}
        self.fallbacks = 0  # reservations decided locally because Redis was away
        # The estimate for a chat request that names no length (nor does its key).
        self.default_max_tokens = config.default_max_tokens

    @classmethod
    @asynccontextmanager
    async def open(cls, config: RateLimitConfig) -> AsyncIterator[RateLimiter]:
        """The limiter and its refund task, for the app's lifespan."""
        redis = None
        if config.redis_url:
            redis = Redis.from_url(
                config.redis_url,
                socket_timeout=config.redis_timeout_s,
                socket_connect_timeout=config.redis_timeout_s,
                retry_on_timeout=False,
            )
        limiter = cls(config, redis)
        task = asyncio.create_task(limiter._settle_forever(), name="loopgate-ratelimit-settle")
        try:
            yield limiter
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await limiter._flush()
            if redis is not None:
                await redis.aclose()

    def _key(self, app_id: str) -> str:
        return f"{self.config.namespace}:ratelimit:{app_id}"

    async def reserve(self, app: AppPrincipal, cost: int) -> Reservation:
        """Take one request and `cost` tokens from the app's buckets, or raise RateLimited."""
        rpm, tpm = app.rpm or 0, app.tpm or 0
        cost = min(cost, tpm) if tpm else 0  # a request larger than the bucket still fits once
        now = time.monotonic()
        if self._script is not None and now >= self._redis_down_until:
            try:
                ok, r, k, wait_ms = await self._shared(app.app_id, rpm, tpm, cost)
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_down_until = now + self.config.retry_redis_after_s
                log.warning("rate limits: Redis unavailable (%s); local buckets decide", exc)
            else:
                self._last_shared[app.app_id] = (float(r), float(k), time.monotonic())
                headers = _headers(rpm, tpm, float(r), float(k))
                if not ok:
                    raise _limited(app, int(wait_ms) / 1000, headers)
                return Reservation(app.app_id, cost, tpm, True, headers)
        if self._script is not None:
            self.fallbacks += 1
        share = self.config.local_share if self._script is not None else 1.0
        lrpm, ltpm = rpm * share, tpm * share
        lcost = min(cost, ltpm) if ltpm else 0
        bucket = self._local.get(app.app_id)
        last = self._last_shared.pop(app.app_id, None)
        if last is not None and (bucket is None or bucket.last < last[2]):
            # Redis answered since this bucket was last used: start from what it said was
            # left (this replica's share of it), not from a full bucket.
            r_left, k_left, at = last
            bucket = self._local[app.app_id] = _Bucket(
                min(lrpm, r_left * share), min(ltpm, k_left * share), at
            )
        elif bucket is None:
            bucket = self._local[app.app_id] = _Bucket(lrpm, ltpm, now)
        ok_local, wait = bucket.take(lrpm, ltpm, lcost, now)
        headers = _headers(int(lrpm), int(ltpm), bucket.r, bucket.k)
        if not ok_local:
            raise _limited(app, wait / 1000, headers)
        return Reservation(app.app_id, int(lcost), tpm, False, headers)

    async def _shared(self, app_id: str, rpm: int, tpm: int, cost: int) -> Any:
        args = {"keys": [self._key(app_id)], "args": [rpm, tpm, cost]}
        try:
            return await self._script(**args)
        except RedisConnectionError:
            # A connection that died with a Redis restart fails on first use; the client has
            # dropped it, so one more try goes out on a fresh connection. Only a second
            # failure means Redis is away.
            return await self._script(**args)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Give back (or charge) the difference between the estimate and the tokens used."""
        if not reservation.tpm:
            return
        delta = reservation.cost - used_tokens
        if delta == 0:
            return
        if reservation.shared:
            key = self._key(reservation.app_id)
            self._refunds[key] = self._refunds.get(key, 0.0) + delta
        else:
            bucket = self._local.get(reservation.app_id)
            if bucket is not None:
                bucket.k += delta

    async def _settle_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            await self._flush()

    async def _flush(self) -> None:
        if not self._refunds or self._redis is None:
            return
        refunds, self._refunds = self._refunds, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, delta in refunds.items():
                    pipe.hincrbyfloat(key, "k", delta)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            # Lost refunds only make the bucket stricter until it refills: a safe failure.
            log.warning("rate limits: could not settle %d apps' tokens: %s", len(refunds), exc)

    def local_bucket_count(self) -> int:
        """Apps with a local bucket (bounded by the configured apps)."""
        return len(self._local)


def _limited(app: AppPrincipal, wait_s: float, headers: list[tuple[bytes, bytes]]) -> RateLimited:
    retry = max(1, math.ceil(wait_s))
    extra = {k.decode(): v.decode() for k, v in headers}
    extra["retry-after"] = str(retry)
    extra["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
    return RateLimited(
        f"Rate limit reached for app {app.app_id}: try again in {wait_s:.3g}s.",
        headers=extra,
    )
