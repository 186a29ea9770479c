"""Runtime: what the request path needs, built once in the lifespan and read from app.state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.resolver import Resolver
from gateway.settings import Settings
from gateway.upstream import Upstreams


def _keep_upstream_id(ex: Exchange) -> str:
    return ex.upstream_id


def _discard(ex: Exchange) -> None:
    return None


@dataclass(eq=False)
class Runtime:
    """Clients and cores of one gateway process; one attribute lookup away from a handler."""

    settings: Settings
    upstreams: Upstreams
    resolver: Resolver
    metrics: Metrics
    response_id: Callable[[Exchange], str] = _keep_upstream_id
    record: Callable[[Exchange], None] = _discard
    settings_loaded_at: float = 0.0
    ready: bool = True
    notes: dict[str, str] = field(default_factory=dict)
