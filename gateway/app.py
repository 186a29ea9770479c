"""create_app(settings): routes, error handlers, and the lifespan that owns every client."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from starlette.routing import Route

from console.app import install_console, open_embedded
from feedback.emitter import open_pipeline
from gateway.auth import Authenticator, keys_from_redis
from gateway.errors import install_error_handlers
from gateway.evaluators import open_evaluators
from gateway.guard import RequestGuard
from gateway.idempotency import IdempotencyKeys, LocalIdempotencyKeys, RedisIdempotencyKeys
from gateway.ids import signer_from_config
from gateway.metrics import Metrics
from gateway.observer import Observer
from gateway.openapi import document_raw_routes
from gateway.proxy import ProxyEndpoint
from gateway.ratelimit import RateLimiter
from gateway.recorder import Recorder, RequestObserver, TracedRecorder, audit_writer
from gateway.resolver import Resolver
from gateway.routes import health, models
from gateway.routes.admin_drift import admin_drift_router
from gateway.routes.admin_experiments import admin_experiments_router
from gateway.routes.admin_feedback import admin_feedback_router
from gateway.routes.admin_flags import admin_flags_router
from gateway.routes.admin_privacy import admin_privacy_router
from gateway.routes.admin_whoami import admin_whoami_router
from gateway.routes.feedback_raw import FeedbackEndpoint, feedback_endpoints
from gateway.runtime import Readiness, Runtime
from gateway.settings import Settings, load_settings
from gateway.shadow import ShadowRunner
from gateway.tracing import open_tracing
from gateway.upstream import Upstreams
from rollout.service import open_experiments
from router.stores import open_store

log = logging.getLogger(__name__)

CONFIG_ENV = "LOOPGATE_CONFIG_PATH"


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    observers: Sequence[RequestObserver] = (),
) -> FastAPI:
    """The gateway ASGI app; nothing connects until the lifespan starts.

    `observers` see every request and piece of feedback (gateway.recorder.RequestObserver):
    the one place to add something that watches traffic.
    """
    app_metrics = metrics or Metrics(multiprocess_dir=settings.telemetry.multiprocess_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            upstreams = await stack.enter_async_context(
                Upstreams.open(settings.pools, settings.balancer, app_metrics.registry)
            )
            events = None
            if settings.events.enabled:
                events = await stack.enter_async_context(
                    open_pipeline(settings.events, settings.instance)
                )
            idempotency = _idempotency_keys(settings)
            stack.push_async_callback(idempotency.aclose)
            auth = Authenticator(settings.auth)
            await stack.enter_async_context(keys_from_redis(auth))
            limiter = await stack.enter_async_context(RateLimiter.open(settings.ratelimit))
            store = None
            if settings.flags.source != "none":
                store = await stack.enter_async_context(
                    open_store(
                        settings.flags,
                        set(settings.pools),
                        on_audit=audit_writer(events, settings.instance),
                    )
                )
            experiments = None
            if settings.experiments.enabled:
                experiments = await stack.enter_async_context(
                    open_experiments(settings.experiments, store, app_metrics.registry)
                )
            tracing = open_tracing(
                settings.telemetry.tracing, settings.instance, span_exporter, metric_reader
            )
            if tracing is not None:
                stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
            observer = Observer(settings.telemetry, app_metrics)
            observer.start()
            stack.push_async_callback(observer.aclose)
            evaluators = None
            if settings.evaluators:
                # Entered after tracing, so drained before it shuts down (LIFO).
                evaluators = await stack.enter_async_context(
                    open_evaluators(
                        settings.evaluators,
                        upstreams,
                        events.emit if events else None,
                        app_metrics.registry,
                        settings.instance,
                    )
                )
                evaluators.tracing = tracing
                # Scores of exposures (and their thumbs) count for experiments, like feedback.
                evaluators.counters = experiments.counters if experiments is not None else None
            signer = signer_from_config(settings.ids)
            recording: dict[str, Any] = {
                "instance": settings.instance,
                "metrics": app_metrics,
                "upstream_metrics": upstreams.metrics,
                "signer": signer,
                "observer": observer,
                "events": events,
                "counters": experiments.counters if experiments is not None else None,
                # Evaluators score finished answers: one more observer of every request.
                "observers": (*observers, evaluators) if evaluators else observers,
            }
            recorder = (
                TracedRecorder(tracing, **recording)
                if tracing is not None
                else Recorder(**recording)
            )
            if evaluators is not None and events is not None:
                # A judge's verdict on a shadow pair is feedback like a person's (event, metrics,
                # experiment counts): the recorder's path, which exists only from here on.
                pipeline, judged = events, recorder
                evaluators.record_preference = lambda body: judged.feedback_received(
                    body, pipeline, time.time()
                )
            shadows = None
            if store is not None:
                shadows = ShadowRunner(
                    upstreams=upstreams, recorder=recorder, signer=signer, metrics=app_metrics
                )
                # Closed before the recorder's sinks (LIFO), and only once the lifespan exits,
                # which uvicorn does after the primaries have drained: then what is left of
                # the shadows is cancelled and counted.
                stack.push_async_callback(shadows.aclose)
            runtime = Runtime(
                settings=settings,
                upstreams=upstreams,
                resolver=Resolver(settings, upstreams, store),
                metrics=app_metrics,
                signer=signer,
                recorder=recorder,
                auth=auth,
                limiter=limiter,
                idempotency=idempotency,
                observer=observer,
                readiness=Readiness(),
                settings_loaded_at=time.time(),
                events=events,
                flags=store,
                experiments=experiments,
                tracing=tracing,
                evaluators=evaluators,
                shadows=shadows,
            )
            app.state.runtime = runtime
            if settings.console.enabled:
                await stack.enter_async_context(open_embedded(app, settings, events))
            app_metrics.bind(runtime)
            await stack.enter_async_context(app_metrics.mirroring())
            log.info("loopgate %s ready: pools %s", settings.instance, ", ".join(settings.pools))
            # Every request allocates a few hundred short-lived containers: with CPython's
            # default of a young collection per 700, collecting was ~9% of the request path.
            thresholds = gc.get_threshold()
            gc.set_threshold(*settings.server.gc_thresholds)
            try:
                yield
            finally:
                runtime.readiness.drain()
                gc.set_threshold(*thresholds)

    app = FastAPI(
        title="Loopgate",
        version="0.1.0",
        description="OpenAI-compatible gateway with A/B routing and feedback capture.",
        lifespan=lifespan,
        # /docs would load Swagger UI from a CDN (air-gapped clusters cannot): off; the schema
        # stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
        # Proxy routes are traced by gateway.tracing (HotPath bypasses FastAPI); FastAPI's own
        # telemetry would use the global providers, which Loopgate never sets: keep it off.
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(RequestGuard, settings=settings)
    # The proxy and feedback routes are raw ASGI endpoints: HotPath serves them without the
    # middleware stack; these entries make them work (and documented) inside FastAPI as well.
    for path, endpoint in raw_endpoints().items():
        app.router.routes.append(Route(path, endpoint, methods=["POST"]))
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(admin_flags_router())
    app.include_router(admin_experiments_router())
    app.include_router(admin_feedback_router())
    app.include_router(admin_drift_router())
    app.include_router(admin_whoami_router())
    if settings.console.enabled:
        install_console(app)
    app.include_router(admin_privacy_router())
    document_raw_routes(app)
    return app


def _idempotency_keys(settings: Settings) -> IdempotencyKeys:
    api = settings.feedback
    if api.redis_url:
        return RedisIdempotencyKeys(
            api.redis_url, api.namespace, api.idempotency_ttl_s, api.idempotency_max_keys
        )
    return LocalIdempotencyKeys(api.idempotency_ttl_s, api.idempotency_max_keys)


def proxy_endpoints() -> dict[str, ProxyEndpoint]:
    """The OpenAI routes the gateway relays, by path."""
    return {
        "/v1/chat/completions": ProxyEndpoint("chat", "/v1/chat/completions"),
        "/v1/completions": ProxyEndpoint("completion", "/v1/completions"),
    }


def raw_endpoints() -> dict[str, ProxyEndpoint | FeedbackEndpoint]:
    """Every raw ASGI endpoint (the hot paths), by path: the proxy's and feedback's."""
    return {**proxy_endpoints(), **feedback_endpoints()}


class HotPath:
    """Outer ASGI app: POSTs to the raw routes skip FastAPI's middleware; the rest go through."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes = raw_endpoints()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.routes.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self.app
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_server_app(settings: Settings) -> HotPath:
    """What uvicorn serves: the app behind its hot-path dispatcher."""
    return HotPath(create_app(settings))


def app_from_environment() -> HotPath:
    """uvicorn factory for `--workers N`: each worker reads the config file named by serve."""
    path = os.environ.get(CONFIG_ENV)
    return create_server_app(load_settings(Path(path) if path else None))
