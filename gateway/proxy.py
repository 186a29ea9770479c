"""Chat and completions relay: a raw ASGI endpoint, because this is the hot path.

The body is parsed once with orjson, only `model` (and stream_options, see below) is changed,
and the answer is relayed as it comes: whole bodies get their id replaced, streams are
forwarded event by event without being held back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

import orjson

from gateway.asgi import (
    ClientGone,
    DisconnectWatch,
    Message,
    Receive,
    RequestHeaders,
    Send,
    read_body,
    trace_id_of,
)
from gateway.auth import AppPrincipal, ModelNotAllowed
from gateway.errors import (
    BadGateway,
    DuplicateAuthorization,
    GatewayError,
    InternalError,
    InvalidRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
    shown,
)
from gateway.exchange import Exchange
from gateway.httpclient import ClientError
from gateway.protocol import Inbound, Kind, TooDeep, choices_asked, encode_forward, parse_inbound
from gateway.ratelimit import Reservation, estimate_tokens
from gateway.resolver import RequestContext, Route
from gateway.runtime import Runtime
from gateway.streaming import relay_stream
from gateway.tracing import RequestTrace
from gateway.upstream import UpstreamCall

log = logging.getLogger(__name__)

_JSON = (b"content-type", b"application/json")
_ANONYMOUS = AppPrincipal("default")
_FALLBACK = (b"x-loopgate-fallback", b"true")
_NO_ATTRIBUTES: dict[str, str] = {}


class ProxyEndpoint:
    """POST /v1/chat/completions and /v1/completions."""

    def __init__(self, kind: Kind, path: str) -> None:
        self.kind: Kind = kind
        self.path = path
        self.route_label = "chat" if kind == "chat" else "completions"
        # Request ids need only be unique: a random prefix per endpoint and a counter,
        # rather than a system call for random bytes on every request.
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = itertools.count()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        rt: Runtime = scope["app"].state.runtime
        headers = RequestHeaders(scope["headers"])
        request_id = headers.request_id or f"{self._id_prefix}{next(self._id_counter):012x}"
        ex = Exchange(request_id=request_id, kind=self.kind, started_at=time.time())
        if headers.traceparent:  # only a valid one is kept (asgi.RequestHeaders)
            ex.trace_id = trace_id_of(headers.traceparent)
        trace: RequestTrace | None = None
        if rt.tracing is not None:  # off: no span is made at all
            trace = rt.tracing.begin(self.kind, headers.traceparent, headers.tracestate)
            ex.trace_id = trace.trace_id
        rt.metrics.in_flight_by_route[self.route_label].inc()
        watch: DisconnectWatch | None = None
        call: UpstreamCall | None = None
        reservation: Reservation | None = None
        try:
            if headers.authorizations > 1:
                raise DuplicateAuthorization("send one Authorization header, not several")
            app = rt.auth.app(headers.authorization) if rt.auth is not None else _ANONYMOUS
            ex.app_id = app.app_id
            ex.consent = app.consent_for(headers.consent)
            limits = rt.settings.limits
            raw = await read_body(receive, limits.max_body_bytes, headers.content_length)
            inbound = parse_inbound(raw, self.kind)
            ex.model, ex.stream, ex.request = inbound.model, inbound.stream, inbound.body
            tokens_out = self._check_limits(rt, app, inbound)
            ctx = self._context(rt, inbound.user, headers, app)
            ex.unit_id = ctx.unit_id
            if trace is not None:
                trace.routing(inbound.model)
            route = rt.resolver.resolve(inbound.model, ctx)
            self._note_route(ex, route)
            if trace is not None:
                trace.routed(ex, inbound.body)
            if route.reason != "static":
                rt.metrics.assignments.labels(route.flag, route.variant, route.reason).inc()
                if ctx.unit_from == "app":
                    rt.metrics.without_unit.labels(route.flag).inc()
            body = inbound.body
            body["model"] = route.served_model
            strip_usage = False
            if inbound.stream and not inbound.include_usage:
                # Ask for usage anyway so tokens are always counted; the extra chunk is
                # not forwarded to a client that did not ask for it.
                options = body.get("stream_options") or {}
                body["stream_options"] = {**options, "include_usage": True}
                strip_usage = True
            if app.limited and rt.limiter is not None:
                reservation = await rt.limiter.reserve(app, estimate_tokens(len(raw), tokens_out))
                ex.headers_out = reservation.headers
            payload = self._encode(ex, body)
            watch = DisconnectWatch(receive)
            forward = self._forward_headers(request_id, headers)
            if trace is not None:  # the upstream span's context replaces the caller's
                trace.upstream(route.served_model, route.pool.name, forward)
            if route.pool.authorization:
                forward["Authorization"] = route.pool.authorization
            try:
                call = await rt.upstreams.send(
                    route.pool, self.path, payload, forward, inbound.stream
                )
            except UpstreamUnavailable:
                # The variant's whole pool is down: its traffic goes to the flag's control.
                control = rt.resolver.fallback(route)
                if control is None:
                    raise
                rt.upstreams.metrics.fallbacks.labels(route.flag, route.variant).inc()
                self._note_route(ex, control)
                ex.fallback = True
                route = control
                body["model"] = route.served_model
                forward.pop("Authorization", None)
                if route.pool.authorization:
                    forward["Authorization"] = route.pool.authorization
                call = await rt.upstreams.send(
                    route.pool, self.path, orjson.dumps(body), forward, inbound.stream
                )
            ex.endpoint = call.endpoint.url
            if trace is not None:
                trace.connected(ex.endpoint)
            if inbound.stream and call.response.status == 200:
                await relay_stream(
                    rt, send, call, route, ex, started, strip_usage,
                    self._response_headers(ex, time.perf_counter() - started),
                    rt.metrics.route(ex.flag, ex.variant, ex.model, self.route_label).itl,
                )  # fmt: skip
            else:
                await self._relay_whole(rt, send, call, route, ex, started)
            call = None
        except ClientGone:
            ex.status, ex.http_status = "cancelled", 499
        except asyncio.CancelledError:
            if watch is None or not watch.gone:
                raise
            # Our own cancellation: the client left. Cut the upstream and finish quietly.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            ex.status, ex.http_status = "cancelled", 499
        except GatewayError as err:
            ex.status, ex.http_status, ex.error = "error", err.status, err.message
            if not ex.model or not ex.flag:
                ex.model = ex.flag = ex.variant = ""  # unknown names must not become labels
            if not ex.responded:
                await self._send_error(send, err, request_id)
        except Exception as exc:  # the edge: a bug must not take the process or hang the client
            log.exception("request %s failed", request_id)
            ex.status, ex.http_status, ex.error = "error", 500, exc.__class__.__name__
            if not ex.model or not ex.flag:
                ex.model = ex.flag = ex.variant = ""
            if not ex.responded:
                await self._send_error(send, InternalError("internal error"), request_id)
        finally:
            if watch is not None:
                watch.close()
            if call is not None:
                call.abort()
            if reservation is not None and rt.limiter is not None:
                rt.limiter.settle(reservation, ex.prompt_tokens + ex.completion_tokens)
            self._finish(rt, ex, started, trace)

    @staticmethod
    def _encode(ex: Exchange, body: dict[str, Any]) -> bytes:
        """The upstream payload; a body too deep to record is refused and left out of the event."""
        try:
            return encode_forward(body)
        except TooDeep:
            ex.request = {}
            raise

    def _check_limits(self, rt: Runtime, app: AppPrincipal, inbound: Inbound) -> int:
        """Refuse what the app may not ask for; returns the tokens it may generate (estimate)."""
        body = inbound.body
        if not app.may_use(inbound.model):
            raise ModelNotAllowed(
                f"this API key may not use the model `{shown(inbound.model)}`", param="model"
            )
        if self.kind == "chat" and len(body["messages"]) > rt.settings.limits.max_messages:
            raise InvalidRequest(
                f"messages has {len(body['messages'])} items; at most "
                f"{rt.settings.limits.max_messages} are accepted",
                param="messages",
            )
        # Each of n (or best_of) answers may be max_tokens long: the ceiling and the
        # estimate count them all.
        n = choices_asked(body, rt.settings.limits.max_n)
        ceiling = app.max_tokens
        asked = None
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"{name} must be a positive integer", param=name)
            if ceiling is not None and value * n > ceiling:
                raise InvalidRequest(_over_ceiling(name, value, n, ceiling), param=name)
            asked = value if asked is None else max(asked, value)
        if asked is not None:
            return asked * n
        if self.kind == "completion":
            if ceiling is not None and 16 * n > ceiling:  # the completions API's default
                raise InvalidRequest(_over_ceiling("max_tokens", 16, n, ceiling), param="n")
            return 16 * n
        if ceiling is not None:
            # The ceiling is enforced, so the request carries it (chat has no default length).
            if ceiling // n < 1:
                raise InvalidRequest(f"n is {n}; this API key allows {ceiling} tokens", param="n")
            body["max_tokens"] = each = ceiling // n
            return each * n
        default = rt.limiter.config.default_max_tokens if rt.limiter is not None else 1024
        return default * n

    def _context(
        self, rt: Runtime, user: str | None, headers: RequestHeaders, app: AppPrincipal
    ) -> RequestContext:
        app_id = app.app_id
        attributes = headers.attributes or _NO_ATTRIBUTES
        if user:
            unit, source = user, "user"
        elif headers.user:
            unit, source = headers.user, "header"
        else:
            unit, source = app_id, "app"
        return RequestContext(unit, app_id, source, attributes, headers.qa_variant, app.qa_override)

    @staticmethod
    def _note_route(ex: Exchange, route: Route) -> None:
        ex.flag, ex.variant, ex.flag_version = route.flag, route.variant, route.flag_version
        ex.reason, ex.served_model = route.reason, route.served_model

    @staticmethod
    def _forward_headers(request_id: str, headers: RequestHeaders) -> dict[str, str]:
        out = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if headers.traceparent:
            out["traceparent"] = headers.traceparent
            if headers.tracestate:
                out["tracestate"] = headers.tracestate
        return out

    def _response_headers(
        self, ex: Exchange, overhead_s: float | None
    ) -> list[tuple[bytes, bytes]]:
        out = [
            (b"x-request-id", ex.request_id.encode()),
            (b"x-loopgate-flag", ex.flag.encode()),
            (b"x-loopgate-variant", ex.variant.encode()),
        ]
        if overhead_s is not None:
            ex.overhead_s = overhead_s
            out.append((b"x-loopgate-overhead-ms", f"{overhead_s * 1000:.3f}".encode()))
        if ex.headers_out:
            out.extend(ex.headers_out)
        if ex.fallback:
            out.append(_FALLBACK)
        return out

    async def _relay_whole(
        self,
        rt: Runtime,
        send: Send,
        call: UpstreamCall,
        route: Route,
        ex: Exchange,
        started: float,
    ) -> None:
        response = call.response
        try:
            data = await response.read()
        except TimeoutError as exc:
            call.fail()
            rt.upstreams.metrics.errors.labels(route.pool.name, "timeout").inc()
            raise UpstreamTimeout(
                f"upstream {route.pool.name} timed out sending its answer"
            ) from exc
        except ClientError as exc:
            call.fail()
            rt.upstreams.metrics.errors.labels(route.pool.name, "bad_response").inc()
            raise BadGateway(f"upstream {route.pool.name} broke off its answer") from exc
        upstream_s = time.perf_counter() - call.started
        call.release()
        status = response.status
        if status == 200:
            body = self._rewrite_answer(rt, data, route, ex)
        else:
            body, message = self._upstream_error(rt, data, status, route)
            ex.status, ex.http_status, ex.error = "error", status, message
        overhead = time.perf_counter() - started - upstream_s
        headers = self._response_headers(ex, overhead)
        headers.append(_JSON)
        headers.append((b"content-length", str(len(body)).encode()))
        ex.responded = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _rewrite_answer(self, rt: Runtime, data: bytes, route: Route, ex: Exchange) -> bytes:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            rt.upstreams.metrics.errors.labels(route.pool.name, "bad_response").inc()
            raise BadGateway(f"upstream {route.pool.name} answered with invalid JSON")
        ex.upstream_id = str(doc.get("id", ""))
        ex.response_id = rt.response_id(ex)
        doc["id"] = ex.response_id
        doc["loopgate"] = {"flag": ex.flag, "variant": ex.variant}
        ex.take_answer(doc)
        return orjson.dumps(doc)

    def _upstream_error(
        self, rt: Runtime, data: bytes, status: int, route: Route
    ) -> tuple[bytes, str]:
        """The upstream's own error in OpenAI's shape, and the message the event records."""
        rt.upstreams.metrics.errors.labels(route.pool.name, f"http_{status // 100}xx").inc()
        prefix = f"upstream {route.pool.name} answered HTTP {status}"
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            error = doc.get("error")
            if isinstance(error, dict):
                return data, f"{prefix}: {str(error.get('message') or '')[:200]}"
            if "message" in doc:  # vLLM's older flat ErrorResponse
                error = {
                    "message": doc.get("message"),
                    "type": doc.get("type"),
                    "param": doc.get("param"),
                    "code": doc.get("code"),
                }
                return orjson.dumps({"error": error}), f"{prefix}: {str(doc['message'])[:200]}"
        message = f"{prefix}: {data[:200].decode('utf-8', 'replace')}"
        error = {"message": message, "type": "upstream_error", "param": None, "code": None}
        return orjson.dumps({"error": error}), message

    async def _send_error(self, send: Send, err: GatewayError, request_id: str) -> None:
        body = err.body()
        headers = [
            _JSON,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        headers.extend((k.lower().encode(), v.encode()) for k, v in err.headers.items())
        try:
            await send({"type": "http.response.start", "status": err.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except OSError:  # the client is gone; nothing left to tell it
            pass

    def _finish(
        self, rt: Runtime, ex: Exchange, started: float, trace: RequestTrace | None = None
    ) -> None:
        ex.latency_s = time.perf_counter() - started
        m = rt.metrics
        m.in_flight_by_route[self.route_label].dec()
        key = (ex.flag, ex.variant, ex.model, self.route_label)
        rm = m.route(*key)
        m.requests_child(rm, key, ex.http_status).inc()
        rm.duration.observe(ex.latency_s)
        m.observe_overhead(self.route_label, ex)
        if ex.status == "cancelled":
            rm.cancelled.inc()
        if ex.ttft_s is not None:
            rm.ttft.observe(ex.ttft_s)
        if ex.prompt_tokens:
            rm.tokens_in.inc(ex.prompt_tokens)
        if ex.completion_tokens:
            rm.tokens_out.inc(ex.completion_tokens)
        if ex.flag:
            if trace is None:
                rt.record(ex)
            else:
                sink = trace.sink()
                rt.record(ex)
                sink.end()
        if trace is not None:
            trace.end(ex)


def _over_ceiling(name: str, value: int, n: int, ceiling: int) -> str:
    if n == 1:
        return f"{name} is {value}; this API key allows at most {ceiling}"
    return f"{name} {value} x n {n} is {value * n} tokens; this API key allows at most {ceiling}"
