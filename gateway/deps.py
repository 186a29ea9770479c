"""Depends aliases that read app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import AppPrincipal, caller_app
from gateway.runtime import Runtime


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _caller_app(request: Request) -> str:
    """The app making this request, from its API key (401 without a valid one)."""
    return caller_app(request).app_id


CallerAppDep = Annotated[str, Depends(_caller_app)]


def _caller(request: Request) -> AppPrincipal:
    """The app making this request, with its settings (401 without a valid key)."""
    return caller_app(request)


CallerDep = Annotated[AppPrincipal, Depends(_caller)]
