"""Depends aliases that read app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.runtime import Runtime


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _caller_app(request: Request) -> str:
    """The app making this request; anonymous callers are the app `default`."""
    app_id: str | None = getattr(request.state, "app_id", None)
    return app_id or "default"


CallerAppDep = Annotated[str, Depends(_caller_app)]
