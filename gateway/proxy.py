"""Chat and completions relay: a raw ASGI endpoint, because this is the hot path.

Each request is one ProxyRequest going through named phases:

    admit   auth, body, limits          (refusals end here, with OpenAI's error JSON)
    route   flag evaluation -> Route    (the variant, its pool and served model)
    send    the candidates in turn      (the variant's pool, then the flag's control)
    relay   the whole answer, or the stream event by event (gateway.streaming)
    finish  one place: release what is held, and the recorder's `finished`

A request its flag mirrors also starts its shadow once admitted, routed and reserved
(gateway.shadow): in the background, never awaited here; `finish` hands it the response id.

The body is parsed once with orjson, only `model` (and stream_options, see below) is changed,
and the answer is relayed as it comes. Everything recorded goes through the Recording
(gateway.recorder), including the signed response id, which is minted there.
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
from gateway.config import LimitsConfig
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
from gateway.recorder import Recording
from gateway.resolver import RequestContext, Route, ShadowRoute
from gateway.runtime import Runtime
from gateway.shadow import ShadowCall, ShadowRunner
from gateway.streaming import relay_stream
from gateway.upstream import UpstreamCall

log = logging.getLogger(__name__)

_JSON = (b"content-type", b"application/json")
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
        headers = RequestHeaders(scope["headers"])
        request_id = headers.request_id or f"{self._id_prefix}{next(self._id_counter):012x}"
        await ProxyRequest(self, scope["app"].state.runtime, headers, request_id).run(receive, send)


class ProxyRequest:
    """One request through its phases; what a phase learns, the next one reads here."""

    __slots__ = (
        "app", "body", "call", "endpoint", "ex", "headers", "inbound", "limits", "raw", "rec",
        "reply", "reservation", "route", "rt", "shadow", "started", "strip_usage", "tokens_out",
        "watch",
    )  # fmt: skip

    def __init__(
        self, endpoint: ProxyEndpoint, rt: Runtime, headers: RequestHeaders, request_id: str
    ) -> None:
        self.started = time.perf_counter()
        self.endpoint = endpoint
        self.rt = rt
        self.limits: LimitsConfig = rt.settings.limits
        self.headers = headers
        self.ex = ex = Exchange(request_id=request_id, kind=endpoint.kind, started_at=time.time())
        if headers.traceparent:  # only a valid one is kept (asgi.RequestHeaders)
            ex.trace_id = trace_id_of(headers.traceparent)
        self.rec: Recording = rt.recorder.begin(ex, endpoint.route_label, headers)
        self.watch: DisconnectWatch | None = None
        self.call: UpstreamCall | None = None
        self.reservation: Reservation | None = None
        self.shadow: ShadowCall | None = None
        self.strip_usage = False
        self.tokens_out = 0
        self.raw = b""

    async def run(self, receive: Receive, send: Send) -> None:
        """Every phase in order; failures become OpenAI errors (or in-band, once streaming)."""
        self.reply = send
        try:
            await self.admit(receive)
            self.choose_route()
            self.watch = DisconnectWatch(receive)
            await self.send_upstream()
            self.raw = b""  # parsed, sent and counted: not held while the answer runs
            await self.relay()
        except ClientGone:
            self.rec.failed("cancelled", 499, None)
        except asyncio.CancelledError:
            if self.watch is None or not self.watch.gone:
                raise
            # Our own cancellation: the client left. Cut the upstream and finish quietly.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self.rec.failed("cancelled", 499, None)
        except GatewayError as err:
            self.rec.failed("error", err.status, err.message)
            await self._refuse(err)
        except Exception as exc:  # the edge: a bug must not take the process or hang the client
            log.exception("request %s failed", self.ex.request_id)
            self.rec.failed("error", 500, exc.__class__.__name__)
            await self._refuse(InternalError("internal error"))
        finally:
            self.finish()

    # -- admit -----------------------------------------------------------------------------

    async def admit(self, receive: Receive) -> None:
        """Who is asking (auth), and what: the body, parsed and checked against the limits."""
        headers, ex = self.headers, self.ex
        if headers.authorizations > 1:
            raise DuplicateAuthorization("send one Authorization header, not several")
        self.app = app = self.rt.auth.app(headers.authorization)
        ex.app_id = app.app_id
        ex.consent = app.consent_for(headers.consent)
        self.raw = await read_body(receive, self.limits.max_body_bytes, headers.content_length)
        self.inbound = inbound = parse_inbound(self.raw, self.endpoint.kind)
        ex.model, ex.stream, ex.request = inbound.model, inbound.stream, inbound.body
        self.body = inbound.body
        self.tokens_out = self._check_limits(app, inbound)

    def _check_limits(self, app: AppPrincipal, inbound: Inbound) -> int:
        """Refuse what the app may not ask for; returns the tokens it may generate (estimate)."""
        body, limits = inbound.body, self.limits
        if not app.may_use(inbound.model):
            raise ModelNotAllowed(
                f"this API key may not use the model `{shown(inbound.model)}`", param="model"
            )
        if self.endpoint.kind == "chat" and len(body["messages"]) > limits.max_messages:
            raise InvalidRequest(
                f"messages has {len(body['messages'])} items; at most "
                f"{limits.max_messages} are accepted",
                param="messages",
            )
        # Each of n (or best_of) answers may be max_tokens long: the ceiling and the
        # estimate count them all.
        n = choices_asked(body, limits.max_n)
        ceiling = app.max_tokens
        asked = _asked_tokens(body, n, ceiling)
        if asked is not None:
            return asked * n
        if self.endpoint.kind == "completion":
            if ceiling is not None and 16 * n > ceiling:  # the completions API's default
                raise InvalidRequest(_over_ceiling("max_tokens", 16, n, ceiling), param="n")
            return 16 * n
        if ceiling is not None:
            # The ceiling is enforced, so the request carries it (chat has no default length).
            if ceiling // n < 1:
                raise InvalidRequest(f"n is {n}; this API key allows {ceiling} tokens", param="n")
            body["max_tokens"] = each = ceiling // n
            return each * n
        return self.rt.limiter.default_max_tokens * n

    # -- route -----------------------------------------------------------------------------

    def choose_route(self) -> None:
        """Flag evaluation: the variant, its pool and served model; the body asks for it."""
        inbound, rec = self.inbound, self.rec
        ctx = self._context(inbound.user)
        self.ex.unit_id = ctx.unit_id
        rec.routing(inbound.model)
        self.route = route = self.rt.resolver.resolve(ctx)
        rec.routed(route, ctx.unit_from)
        if inbound.stream and not inbound.include_usage:
            # Ask for usage anyway so tokens are always counted; the extra chunk is
            # not forwarded to a client that did not ask for it.
            options = self.body.get("stream_options") or {}
            self.body["stream_options"] = {**options, "include_usage": True}
            self.strip_usage = True

    def _context(self, user: str | None) -> RequestContext:
        headers, app_id = self.headers, self.app.app_id
        attributes = headers.attributes or _NO_ATTRIBUTES
        if user:
            unit, source = user, "user"
        elif headers.user:
            unit, source = headers.user, "header"
        else:
            unit, source = app_id, "app"
        return RequestContext(
            unit_id=unit,
            app_id=app_id,
            model=self.inbound.model,
            attributes=attributes,
            qa_variant=headers.qa_variant,
            qa_allowed=self.app.qa_override,
            unit_from=source,
        )

    # -- send ------------------------------------------------------------------------------

    async def send_upstream(self) -> None:
        """Reserve the app's rate, then try each candidate route until a pool takes the call."""
        app = self.app
        if app.limited:
            self.reservation = reservation = await self.rt.limiter.reserve(
                app, estimate_tokens(len(self.raw), self.tokens_out)
            )
            self.ex.headers_out = reservation.headers
        route = self.route
        if route.shadow is not None and self.rt.shadows is not None:
            self._start_shadow(route.shadow, self.rt.shadows)
        upstreams, path, stream = self.rt.upstreams, self.endpoint.path, self.inbound.stream
        while True:  # over the candidates: the chosen route, then the flag's control
            self.body["model"] = route.served_model
            payload = self._encode()
            forward = self._forward_headers(route)
            self.rec.sending(route, forward)
            try:
                self.call = await upstreams.send(route.pool, path, payload, forward, stream)
            except UpstreamUnavailable:
                # The route's whole pool is down: its traffic goes to the flag's control
                # (whose own fallback is None, which ends the loop).
                control = self.rt.resolver.fallback(route)
                if control is None:
                    raise
                self.rec.fallback(route, control)
                route = control
                continue
            self.route = route
            self.rec.first_byte(self.call.endpoint.url)
            return

    def _start_shadow(self, shadow: ShadowRoute, runner: ShadowRunner) -> None:
        """The flag mirrors this request: its shadow starts now, in the background."""
        endpoint = self.endpoint
        self.shadow = runner.start(
            shadow,
            self.ex,
            self.rec,
            self.body,
            endpoint.path,
            endpoint.route_label,
            estimate_tokens(len(self.raw), self.tokens_out),
        )
        if self.shadow is not None:
            self.ex.shadowed = True

    def _encode(self) -> bytes:
        """The upstream payload; a body too deep to record is refused and left out of the event."""
        try:
            return encode_forward(self.body)
        except TooDeep:
            self.ex.request = {}
            raise

    def _forward_headers(self, route: Route) -> dict[str, str]:
        headers = self.headers
        out = {"Content-Type": "application/json", "X-Request-Id": self.ex.request_id}
        if headers.traceparent:
            out["traceparent"] = headers.traceparent
            if headers.tracestate:
                out["tracestate"] = headers.tracestate
        if route.pool.authorization:
            out["Authorization"] = route.pool.authorization
        return out

    # -- relay -----------------------------------------------------------------------------

    async def relay(self) -> None:
        """The answer to the client: the stream as it comes, or the whole body rewritten."""
        call = self.call
        assert call is not None
        if self.inbound.stream and call.response.status == 200:
            await relay_stream(self)
        else:
            await self._relay_whole(call)
        self.call = None

    def response_headers(self, overhead_s: float | None) -> list[tuple[bytes, bytes]]:
        """The headers of the answer: ids, flag and variant, overhead, rate limits."""
        ex = self.ex
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

    async def _relay_whole(self, call: UpstreamCall) -> None:
        pool = self.route.pool.name
        response = call.response
        try:
            data = await response.read()
        except TimeoutError as exc:
            call.fail()
            self.rec.upstream_error(pool, "timeout")
            raise UpstreamTimeout(f"upstream {pool} timed out sending its answer") from exc
        except ClientError as exc:
            call.fail()
            self.rec.upstream_error(pool, "bad_response")
            raise BadGateway(f"upstream {pool} broke off its answer") from exc
        upstream_s = time.perf_counter() - call.started
        call.release()
        status = response.status
        if status == 200:
            body = self._rewrite_answer(data, pool)
        else:
            body, message = self._upstream_error(data, status, pool)
            self.rec.failed("error", status, message)
        headers = self.response_headers(time.perf_counter() - self.started - upstream_s)
        headers.append(_JSON)
        headers.append((b"content-length", str(len(body)).encode()))
        self.ex.responded = True
        await self.reply({"type": "http.response.start", "status": status, "headers": headers})
        await self.reply({"type": "http.response.body", "body": body})

    def _rewrite_answer(self, data: bytes, pool: str) -> bytes:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            self.rec.upstream_error(pool, "bad_response")
            raise BadGateway(f"upstream {pool} answered with invalid JSON")
        ex = self.ex
        doc["id"] = self.rec.response_id(str(doc.get("id", "")))
        doc["loopgate"] = {"flag": ex.flag, "variant": ex.variant}
        ex.take_answer(doc)
        return orjson.dumps(doc)

    def _upstream_error(self, data: bytes, status: int, pool: str) -> tuple[bytes, str]:
        """The upstream's own error in OpenAI's shape, and the message the event records."""
        self.rec.upstream_error(pool, f"http_{status // 100}xx")
        prefix = f"upstream {pool} answered HTTP {status}"
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

    async def _refuse(self, err: GatewayError) -> None:
        """The error as OpenAI's JSON, unless the answer has started (then it went in-band)."""
        if self.ex.responded:
            return
        body = err.body()
        headers = [
            _JSON,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self.ex.request_id.encode()),
        ]
        headers.extend((k.lower().encode(), v.encode()) for k, v in err.headers.items())
        try:
            await self.reply(
                {"type": "http.response.start", "status": err.status, "headers": headers}
            )
            await self.reply({"type": "http.response.body", "body": body})
        except OSError:  # the client is gone; nothing left to tell it
            pass

    # -- finish ----------------------------------------------------------------------------

    def finish(self) -> None:
        """The one end of every request: let go of what is held, then record it."""
        if self.watch is not None:
            self.watch.close()
        if self.call is not None:
            self.call.abort()
        if self.reservation is not None:
            ex = self.ex
            self.rt.limiter.settle(self.reservation, ex.prompt_tokens + ex.completion_tokens)
        self.rec.finished(self.started)
        if self.shadow is not None:
            # After the primary's own recording: observers see the primary finish first.
            ex = self.ex
            self.shadow.primary_done(ex.response_id if ex.status == "ok" else "")


def _asked_tokens(body: dict[str, Any], n: int, ceiling: int | None) -> int | None:
    """The larger of max_tokens and max_completion_tokens, checked; None when neither is set."""
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
    return asked


def _over_ceiling(name: str, value: int, n: int, ceiling: int) -> str:
    if n == 1:
        return f"{name} is {value}; this API key allows at most {ceiling}"
    return f"{name} {value} x n {n} is {value * n} tokens; this API key allows at most {ceiling}"
