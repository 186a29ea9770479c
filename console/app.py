"""Where the console runs: inside the gateway (`install_console` + `open_console`) or alone
(`create_console_app`, for `loopgate console --gateway URL`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from console.admin import AdminClient, AdminError
from console.config import ConsoleConfig
from console.feed import Feed
from console.queues import MemoryQueues, QueueStore, RedisQueues
from console.routes import TEMPLATES, NeedSignIn, Refused, console_router
from console.session import COOKIE, Sessions, session_secret
from console.state import ConsoleState
from feedback.emitter import EventPipeline, open_pipeline
from feedback.schema import FeedbackEvent

log = logging.getLogger(__name__)

PREFIX = "/console"
STATIC = Path(__file__).with_name("static")


def _queues(config: ConsoleConfig) -> QueueStore:
    if config.redis_url:
        return RedisQueues(
            config.redis_url, config.namespace, config.claim_timeout_s, config.max_items
        )
    return MemoryQueues(config.claim_timeout_s, config.max_items)


def _sessions(config: ConsoleConfig, ids_keys: list[str]) -> Sessions:
    secret = session_secret(
        config.session_secret.get_secret_value() if config.session_secret else None, ids_keys
    )
    if secret is None:
        log.warning(
            "console: no console.session_secret or ids.keys: sessions use a random "
            "per-process key (sign in again after a restart; one worker only)"
        )
        secret = secrets.token_bytes(32)
    return Sessions(secret, config.session_ttl_s)


@asynccontextmanager
async def open_console(
    config: ConsoleConfig,
    instance: str,
    ids_keys: list[str],
    http: httpx.AsyncClient,
    events: EventPipeline | None,
) -> AsyncIterator[ConsoleState]:
    """The console's state; with an event pipeline, its feed listens to the pipeline."""
    queues = _queues(config)
    feed: Feed | None = None
    task: asyncio.Task[None] | None = None
    emit: Callable[[FeedbackEvent], None] | None = None
    if events is not None:
        feed = Feed(config, queues)
        events.listeners.append(feed.listen)
        task = asyncio.create_task(feed.run(), name="loopgate-console-feed")
        emit = events.emit
    state = ConsoleState(
        config=config,
        sessions=_sessions(config, ids_keys),
        admin=AdminClient(http),
        queues=queues,
        feed=feed,
        emit=emit,
        instance=instance,
        prefix=PREFIX,
    )
    try:
        yield state
    finally:
        if events is not None and feed is not None:
            events.listeners.remove(feed.listen)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.admin.aclose()
        await queues.aclose()


def install_console(app: FastAPI) -> None:
    """Add the console's routes, assets and error pages to `app` (state set in its lifespan)."""
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["ts"] = format_time
    templates.env.filters["short_id"] = short_id
    app.include_router(console_router(templates, PREFIX))
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")

    def error_page(request: Request, status: int, message: str) -> Response:
        session = None
        console: ConsoleState | None = getattr(request.app.state, "console", None)
        if console is not None:
            session = console.sessions.open(request.cookies.get(COOKIE), time.time())
        return templates.TemplateResponse(
            request,
            "error.html",
            {"request": request, "session": session, "base": PREFIX, "status": status,
             "message": message, "role_label": {}, "flash": None, "error": None},
            status_code=status,
        )  # fmt: skip

    async def need_sign_in(request: Request, exc: Exception) -> Response:
        if request.method == "GET":
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        return error_page(request, 401, "sign in first")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return error_page(request, exc.status, exc.message)

    async def admin_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AdminError)
        return error_page(request, exc.status, f"the gateway answered {exc.status}: {exc.message}")

    app.add_exception_handler(NeedSignIn, need_sign_in)
    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(AdminError, admin_error)


def format_time(unix: float | None) -> str:
    """Unix seconds as UTC date and time."""
    if unix is None:
        return "-"
    return datetime.fromtimestamp(float(unix), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short_id(response_id: str | None) -> str:
    """A response id short enough to read (the full one is in the title attribute)."""
    text = response_id or ""
    return text if len(text) <= 20 else f"{text[:10]}…{text[-8:]}"


def in_process_client(app: Any) -> httpx.AsyncClient:
    """An HTTP client whose requests go to `app` in this process (the embedded console)."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
    )


def create_console_app(settings: Any, gateway_url: str) -> FastAPI:
    """The console alone, acting on the gateway at `gateway_url` through its admin API.

    Labels and preferences go to this process's own event pipeline (`events` settings);
    review items come from the Redis queue store the gateways fill (`console.redis_url`).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            events = None
            if settings.events.enabled:
                events = await stack.enter_async_context(
                    open_pipeline(settings.events, f"{settings.instance}-console")
                )
            http = httpx.AsyncClient(base_url=gateway_url.rstrip("/"), timeout=30)
            ids = [k.get_secret_value() for k in settings.ids.keys]
            state = await stack.enter_async_context(
                open_console(settings.console, settings.instance, ids, http, None)
            )
            if events is not None:
                state.emit = events.emit
            app.state.console = state
            yield

    app = FastAPI(title="Loopgate Console", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse(PREFIX, status_code=307)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> HTMLResponse:
        return HTMLResponse("ok")

    install_console(app)
    return app


@asynccontextmanager
async def open_embedded(
    app: FastAPI, settings: Any, events: EventPipeline | None
) -> AsyncIterator[None]:
    """The console inside the gateway: admin calls go to `app` itself, in process."""
    ids = [k.get_secret_value() for k in settings.ids.keys]
    client = in_process_client(app)
    async with open_console(settings.console, settings.instance, ids, client, events) as state:
        app.state.console = state
        yield
