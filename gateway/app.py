"""create_app(settings): routes, error handlers, and the lifespan that owns every client."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.routing import Route

from gateway.errors import install_error_handlers
from gateway.metrics import Metrics
from gateway.openapi import document_proxy_routes
from gateway.proxy import ProxyEndpoint
from gateway.resolver import Resolver
from gateway.routes import health, models
from gateway.runtime import Runtime
from gateway.settings import Settings, load_settings
from gateway.upstream import Upstreams

log = logging.getLogger(__name__)

CONFIG_ENV = "LOOPGATE_CONFIG_PATH"


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    """The gateway ASGI app; nothing connects until the lifespan starts."""
    app_metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Upstreams.open(settings.pools) as upstreams:
            app.state.runtime = Runtime(
                settings=settings,
                upstreams=upstreams,
                resolver=Resolver(settings, upstreams),
                metrics=app_metrics,
                settings_loaded_at=time.time(),
            )
            log.info("loopgate %s ready: pools %s", settings.instance, ", ".join(settings.pools))
            yield
            app.state.runtime.ready = False

    app = FastAPI(
        title="Loopgate",
        version="0.1.0",
        description="OpenAI-compatible gateway with A/B routing and feedback capture.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # The two hot routes are raw ASGI endpoints; they go first so nothing else matches them.
    app.router.routes.append(
        Route(
            "/v1/chat/completions", ProxyEndpoint("chat", "/v1/chat/completions"), methods=["POST"]
        )
    )
    app.router.routes.append(
        Route("/v1/completions", ProxyEndpoint("completion", "/v1/completions"), methods=["POST"])
    )
    app.include_router(models.router)
    app.include_router(health.router)
    document_proxy_routes(app)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory for `--workers N`: each worker reads the config file named by serve."""
    path = os.environ.get(CONFIG_ENV)
    return create_app(load_settings(Path(path) if path else None))
