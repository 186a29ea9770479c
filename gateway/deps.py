"""Depends aliases: the only place that reads app.state (routes take these, never the state)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import AppPrincipal, caller_app
from gateway.errors import Conflict
from gateway.runtime import Runtime
from gateway.settings import Settings
from rollout.service import Experiments
from router.stores.base import FlagStore


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _settings(request: Request) -> Settings:
    # Set by create_app, so it is there before the lifespan has built the Runtime.
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def _flags(request: Request) -> FlagStore:
    """The flag store, or 409 when none is configured."""
    store: FlagStore | None = _runtime(request).flags
    if store is None:
        raise Conflict("no flag store is configured (flags.source is none)")
    return store


FlagsDep = Annotated[FlagStore, Depends(_flags)]


def _experiments(request: Request) -> Experiments:
    """The experiments service, or 409 when experiments are off."""
    experiments: Experiments | None = _runtime(request).experiments
    if experiments is None:
        raise Conflict("experiments are disabled (experiments.enabled is false)")
    return experiments


ExperimentsDep = Annotated[Experiments, Depends(_experiments)]


def _caller_app(request: Request) -> str:
    """The app making this request, from its API key (401 without a valid one)."""
    return caller_app(_runtime(request).auth, request).app_id


CallerAppDep = Annotated[str, Depends(_caller_app)]


def _caller(request: Request) -> AppPrincipal:
    """The app making this request, with its settings (401 without a valid key)."""
    return caller_app(_runtime(request).auth, request)


CallerDep = Annotated[AppPrincipal, Depends(_caller)]
