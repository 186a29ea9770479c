"""Depends aliases: the only place that reads app.state (routes take these, never the state)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request

from gateway.auth import AppPrincipal, caller_app
from gateway.errors import Conflict
from gateway.runtime import Runtime
from gateway.settings import Settings
from rollout.service import Experiments
from router.stores.base import FlagStore

_T = TypeVar("_T")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _settings(request: Request) -> Settings:
    # Set by create_app, so it is there before the lifespan has built the Runtime.
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def _present(part: _T | None, why_not: str) -> _T:
    """A part of the runtime that configuration may turn off; 409 saying how when it is off."""
    if part is None:
        raise Conflict(why_not)
    return part


def _flags(request: Request) -> FlagStore:
    return _present(_runtime(request).flags, "no flag store is configured (flags.source is none)")


FlagsDep = Annotated[FlagStore, Depends(_flags)]


def _experiments(request: Request) -> Experiments:
    return _present(
        _runtime(request).experiments, "experiments are disabled (experiments.enabled is false)"
    )


ExperimentsDep = Annotated[Experiments, Depends(_experiments)]


def _caller_app(request: Request) -> str:
    """The app making this request, from its API key (401 without a valid one)."""
    return caller_app(_runtime(request).auth, request).app_id


CallerAppDep = Annotated[str, Depends(_caller_app)]


def _caller(request: Request) -> AppPrincipal:
    """The app making this request, with its settings (401 without a valid key)."""
    return caller_app(_runtime(request).auth, request)


CallerDep = Annotated[AppPrincipal, Depends(_caller)]
