"""Shadow traffic: a flag's shadow variant answers a request too, unseen by the client.

A shadow is one more phase of a primary request, not a second proxy. After the primary is
admitted and routed (and its rate reserved), the request path hands its body to the
ShadowRunner, which either drops the shadow at once (counted in
loopgate_shadow_dropped_total{flag,reason}) or starts one background task:

    send     the same body, `model` rewritten, to the shadow variant's pool: one endpoint,
             never retried, no fallback, bounded by Shadow.timeout_s (gateway.upstream)
    read     the whole answer, or the stream (its time to first token), into its own Exchange
    pair     wait for the primary to finish: its response id is the shadow's `pair_of`, and
             its nonce the pair claim of the shadow's own signed id (gateway.ids)
    finish   the recorder's `finished`: metrics with role="shadow", the completion event,
             observers (evaluators, console) with ex.role == "shadow"

Nothing is ever queued: a flag's shadows have a bound on calls in flight and a token budget
(the rate limiter's estimate: prompt bytes / 4 + max tokens), and a shadow over either is
dropped. The primary never waits for its shadow; the shadow never counts against the app's
rate limits and is no experiment exposure. At shutdown the runner is closed after the
primaries have drained (the lifespan's exit), and cancels what is left (reason `shutdown`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from gateway.exchange import Exchange
from gateway.httpclient import ClientError
from gateway.ids import ResponseIdError, ResponseIdSigner
from gateway.metrics import Metrics
from gateway.protocol import encode_forward
from gateway.recorder import Recorder, Recording
from gateway.resolver import ShadowRoute
from gateway.streaming import NotEventStream, event_json, take_events
from gateway.upstream import UpstreamCall, Upstreams
from router.model import Shadow

log = logging.getLogger(__name__)


class ShadowBudget:
    """One flag's shadows in this process: calls in flight and a token bucket (pure)."""

    __slots__ = ("_at", "_tokens", "in_flight", "max_in_flight", "tokens_per_minute")

    def __init__(self, config: Shadow, now: float) -> None:
        self.in_flight = 0
        self.max_in_flight = config.max_in_flight
        self.tokens_per_minute = config.tokens_per_minute
        self._tokens = float(config.tokens_per_minute or 0)  # starts full
        self._at = now

    def configure(self, config: Shadow, now: float) -> None:
        """New limits from a changed flag; calls in flight stay counted."""
        self._refill(now)
        self.max_in_flight = config.max_in_flight
        if config.tokens_per_minute != self.tokens_per_minute:
            if self.tokens_per_minute is None:
                self._tokens = float(config.tokens_per_minute or 0)
            self.tokens_per_minute = config.tokens_per_minute
            self._tokens = min(self._tokens, float(config.tokens_per_minute or 0))

    def _refill(self, now: float) -> None:
        tpm = self.tokens_per_minute
        if tpm is not None:
            elapsed = max(0.0, now - self._at)
            self._tokens = min(float(tpm), self._tokens + elapsed * tpm / 60.0)
        self._at = now

    def admit(self, tokens: int, now: float) -> str | None:
        """Take a slot and `tokens` now, or say why not ("in_flight", "budget"); never waits."""
        if self.in_flight >= self.max_in_flight:
            return "in_flight"
        if self.tokens_per_minute is not None:
            self._refill(now)
            if tokens > self._tokens:
                return "budget"
            self._tokens -= tokens
        self.in_flight += 1
        return None

    def release(self) -> None:
        """A call's upstream part is over (answered, failed or cancelled)."""
        self.in_flight -= 1

    def tokens(self, now: float) -> float:
        """Tokens left in the bucket now (inf without a budget)."""
        if self.tokens_per_minute is None:
            return math.inf
        self._refill(now)
        return self._tokens


class ShadowRunner:
    """Starts, bounds and at shutdown cancels the shadow calls of one gateway process."""

    def __init__(
        self,
        *,
        upstreams: Upstreams,
        recorder: Recorder,
        signer: ResponseIdSigner,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = upstreams
        self.recorder = recorder
        self.signer = signer
        self.metrics = metrics
        self.clock = clock
        self._budgets: dict[str, ShadowBudget] = {}
        self.calls: set[ShadowCall] = set()
        self._closing = False

    def dropped(self, flag: str, reason: str) -> None:
        """Count a shadow that was not sent, or not answered."""
        self.metrics.shadow_dropped.labels(flag, reason).inc()

    def budget(self, flag: str, config: Shadow) -> ShadowBudget:
        """The flag's budget, its limits as the flag says now."""
        now = self.clock()
        found = self._budgets.get(flag)
        if found is None:
            found = self._budgets[flag] = ShadowBudget(config, now)
        elif (found.max_in_flight, found.tokens_per_minute) != (
            config.max_in_flight,
            config.tokens_per_minute,
        ):
            found.configure(config, now)
        return found

    def start(
        self,
        route: ShadowRoute,
        primary: Exchange,
        primary_rec: Recording,
        body: dict[str, Any],
        path: str,
        route_label: str,
        tokens: int,
    ) -> ShadowCall | None:
        """The shadow of a routed primary, started in the background; None when dropped."""
        flag = primary.flag
        if self._closing:
            self.dropped(flag, "shutdown")
            return None
        if primary.consent == "none":
            self.dropped(flag, "consent")
            return None
        budget = self.budget(flag, route.config)
        refused = budget.admit(tokens, self.clock())
        if refused is not None:
            self.dropped(flag, refused)
            return None
        call = ShadowCall(self, route, budget, primary, primary_rec, body, path, route_label)
        call.task = asyncio.create_task(call.run(), name=f"loopgate-shadow-{primary.request_id}")
        self.calls.add(call)
        call.task.add_done_callback(lambda _: self.calls.discard(call))
        return call

    async def aclose(self) -> None:
        """Cancel every shadow still running (the primaries have drained) and wait for them."""
        self._closing = True
        calls = list(self.calls)
        for call in calls:
            call.cancel("shutdown")
        tasks = [call.task for call in calls if call.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("shadows: %d cancelled at shutdown", len(tasks))


def shadow_body(body: dict[str, Any], route: ShadowRoute) -> dict[str, Any]:
    """The primary's body for the shadow: a copy, `model` and streaming as the shadow says."""
    out = dict(body)
    out["model"] = route.served_model
    if route.config.stream:
        out["stream"] = True
        options = out.get("stream_options")
        out["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                 "include_usage": True}  # fmt: skip
    else:
        out["stream"] = False
        out.pop("stream_options", None)
    return out


class ShadowCall:
    """One shadow: its Exchange and Recording, and the task that sends, reads and records it."""

    def __init__(
        self,
        runner: ShadowRunner,
        route: ShadowRoute,
        budget: ShadowBudget,
        primary: Exchange,
        primary_rec: Recording,
        body: dict[str, Any],
        path: str,
        route_label: str,
    ) -> None:
        self.runner = runner
        self.route = route
        self.budget = budget
        self.path = path
        self.task: asyncio.Task[None] | None = None
        self.body = shadow_body(body, route)
        self._pair: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._cancel_reason: str | None = None
        self._dropped = False  # counted once, whatever happens after
        self._holding = True
        self.started = time.perf_counter()
        recorder = runner.recorder
        self.ex = ex = Exchange(
            request_id=f"{primary.request_id}-shadow", kind=primary.kind, started_at=time.time()
        )
        ex.role = "shadow"
        ex.model, ex.stream, ex.request = primary.model, route.config.stream, self.body
        ex.flag, ex.flag_version, ex.variant = primary.flag, primary.flag_version, route.variant
        ex.reason, ex.served_model = "shadow", route.served_model
        ex.app_id, ex.unit_id, ex.consent = primary.app_id, primary.unit_id, primary.consent
        ex.unit_hash = recorder.unit_hash(primary)
        self.rec = recorder.begin_shadow(ex, route_label, primary_rec)

    def primary_done(self, response_id: str) -> None:
        """The primary finished: its response id pairs the shadow; none (it failed): cancel."""
        if not response_id:
            self.cancel("primary_failed")
        elif not self._pair.done():
            self._pair.set_result(response_id)

    def cancel(self, reason: str) -> None:
        """Stop the shadow, counted with `reason` (shutdown, primary_failed)."""
        if self.task is not None and not self.task.done():
            if self._cancel_reason is None:
                self._cancel_reason = reason
            self.task.cancel()

    def _drop(self, reason: str) -> None:
        if not self._dropped:
            self._dropped = True
            self.runner.dropped(self.ex.flag, reason)

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self.budget.release()

    async def run(self) -> None:
        """Send, read, wait for the pair, record; whatever happens, the primary never sees it."""
        ex, rec = self.ex, self.rec
        ended: float | None = None
        try:
            reason = await self._call()
            ended = time.perf_counter()
            self._release()
            if reason is not None:
                self._drop(reason)
            response_id = await self._pair
            self._paired(response_id)
        except asyncio.CancelledError:
            # Ours (shutdown, or the primary failed): counted, recorded, not re-raised.
            self._release()
            self._drop(self._cancel_reason or "shutdown")
            if ex.status == "ok":
                rec.failed("cancelled", 499, None)
            if self._pair.done() and not self._pair.cancelled():
                self._paired(self._pair.result())
        except Exception:  # the edge: a bug here must never reach the primary or the loop
            log.exception("shadow %s failed", ex.request_id)
            self._release()
            self._drop("error")
            rec.failed("error", 500, "shadow failed")
        finally:
            self._release()
        try:
            rec.finished(self.started, ended)
        except Exception:
            log.exception("shadow %s: recording failed", ex.request_id)

    def _paired(self, response_id: str) -> None:
        """The shadow's pair_of and its own signed id, with the primary's nonce as the pair."""
        ex = self.ex
        try:
            nonce = self.runner.signer.verify(response_id, time.time(), math.inf).nonce
        except ResponseIdError:  # the primary's id is ours: cannot happen, but never pair a bad one
            log.warning("shadow %s: the primary's response id does not verify", ex.request_id)
            return
        ex.pair_of = response_id
        self.rec.response_id(ex.upstream_id, pair=nonce)

    async def _call(self) -> str | None:
        """The upstream part; returns why the shadow went unanswered (a drop reason) or None."""
        ex, rec, route = self.ex, self.rec, self.route
        pool = route.pool
        headers = {"Content-Type": "application/json", "X-Request-Id": ex.request_id}
        if pool.authorization:
            headers["Authorization"] = pool.authorization
        call: UpstreamCall | None = None
        try:
            async with asyncio.timeout(route.config.timeout_s):
                payload = encode_forward(self.body)
                rec.sending(route, headers)
                call = await self.runner.upstreams.send(
                    pool, self.path, payload, headers, ex.stream, once=True
                )
                rec.first_byte(call.endpoint.url)
                if ex.stream and call.response.status == 200:
                    await self._read_stream(call)
                else:
                    return await self._read_whole(call)
        except UpstreamUnavailable as err:
            rec.failed("error", err.status, err.message)
            return "pool_unavailable"
        except (TimeoutError, UpstreamTimeout):
            if call is not None:
                call.fail()
                rec.upstream_error(pool.name, "timeout")
            rec.failed("error", 504, f"shadow timed out after {route.config.timeout_s:g}s")
            return "timeout"
        except GatewayError as err:
            rec.failed("error", err.status, err.message)
            return "error"
        except (ClientError, NotEventStream) as exc:
            if call is not None:
                call.fail()
            rec.upstream_error(pool.name, "bad_response")
            rec.failed("error", 502, f"shadow upstream {pool.name} broke off: {exc}")
            return "error"
        finally:
            if call is not None:
                call.abort()  # a no-op once released
        return None

    async def _read_whole(self, call: UpstreamCall) -> str | None:
        ex, rec = self.ex, self.rec
        data = await call.response.read()
        call.release()
        status = call.response.status
        if status != 200:
            rec.upstream_error(self.route.pool.name, f"http_{status // 100}xx")
            rec.failed("error", status, f"shadow upstream answered HTTP {status}")
            return "error"
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            rec.upstream_error(self.route.pool.name, "bad_response")
            rec.failed("error", 502, "shadow upstream answered with invalid JSON")
            return "error"
        ex.upstream_id = str(doc.get("id", ""))
        ex.take_answer(doc)
        return None

    async def _read_stream(self, call: UpstreamCall) -> None:
        """The stream's events into the Exchange as they come; the first content is ttft."""
        ex, rec, started = self.ex, self.rec, self.started
        pending = b""
        async for data in call.response.iter_any():
            events, pending = take_events(pending + data)
            for event in events:
                doc = event_json(event)
                if doc is None:
                    continue
                if not ex.upstream_id and "id" in doc:
                    ex.upstream_id = str(doc["id"])
                if ex.take_chunk(doc) and rec.content(time.perf_counter(), started):
                    call.first_token()
        call.release()
