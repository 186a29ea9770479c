"""Which pool and served model answer a request for a model name."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import UnknownModel
from gateway.settings import Settings
from gateway.upstream import Pool, Upstreams


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes and why; flag/variant label metrics and events."""

    model: str
    flag: str
    variant: str
    flag_version: int
    reason: str
    pool: Pool
    served_model: str


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who is asking: the unit that assignment is sticky for, and the app."""

    unit_id: str
    app_id: str
    unit_from: str


class Resolver:
    """Maps asked model names to routes; static models are resolved once at start."""

    def __init__(self, settings: Settings, upstreams: Upstreams) -> None:
        self._static = {
            name: Route(
                model=name,
                flag=name,
                variant=route.pool,
                flag_version=0,
                reason="static",
                pool=upstreams.pools[route.pool],
                served_model=route.served_model or settings.pools[route.pool].served_model,
            )
            for name, route in settings.models.items()
        }

    def models(self) -> list[str]:
        """Model names apps may ask for."""
        return sorted(self._static)

    def resolve(self, model: str, ctx: RequestContext) -> Route:
        """The route for this request, or UnknownModel."""
        route = self._static.get(model)
        if route is None:
            raise UnknownModel(f"The model `{model}` does not exist.", param="model")
        return route
