"""Which pool and served model answer a request for a model name: its flag, else a static route."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.errors import UnknownModel, shown
from gateway.settings import Settings
from gateway.upstream import Pool, Upstreams
from router.model import EvalContext, Shadow, Variant
from router.shadow import shadow_for
from router.snapshot import assign
from router.stores.base import FlagStore

_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ShadowRoute:
    """Where a request's shadow goes (gateway.shadow): the flag's shadow variant."""

    config: Shadow
    variant: str
    pool: Pool
    served_model: str


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
    # The flag's shadow, when this request is one it mirrors (router.shadow.shadow_for).
    shadow: ShadowRoute | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestContext(EvalContext):
    """The router's EvalContext, plus where the unit id came from (user, header or app)."""

    unit_from: str


class Resolver:
    """Maps asked model names to routes: a flag decides when one governs the name."""

    def __init__(
        self, settings: Settings, upstreams: Upstreams, flags: FlagStore | None = None
    ) -> None:
        self._upstreams = upstreams
        self._flags = flags
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
        """Model names apps may ask for: flag keys and static models."""
        names = set(self._static)
        if self._flags is not None:
            names.update(self._flags.snapshot().flags)
        return sorted(names)

    def resolve(self, ctx: RequestContext) -> Route:
        """The route for this request, or UnknownModel."""
        model = ctx.model
        if self._flags is not None:
            # The router's own lookup (router.snapshot.assign): what bench_router measures.
            snapshot = self._flags.snapshot()
            assignment = assign(snapshot, model, ctx)
            if assignment is not None:
                variant = assignment.variant
                pool = self._upstreams.pools[variant.pool]
                flag = snapshot.flags[model]
                shadow = None
                if flag.shadow is not None:
                    config = shadow_for(flag, assignment, ctx.unit_id)
                    if config is not None:
                        shadow = self._shadow_route(config, flag.variant(config.variant))
                return Route(
                    model=model,
                    flag=assignment.flag_key,
                    variant=variant.name,
                    flag_version=assignment.flag_version,
                    reason=assignment.reason,
                    pool=pool,
                    served_model=variant.served_model or pool.config.served_model,
                    shadow=shadow,
                )
        route = self._static.get(model)
        if route is None:
            raise UnknownModel(f"The model `{shown(model)}` does not exist.", param="model")
        return route

    def _shadow_route(self, config: Shadow, variant: Variant) -> ShadowRoute | None:
        pool = self._upstreams.pools.get(variant.pool)
        if pool is None:  # the store checks pools; a flag naming none is not mirrored
            return None
        return ShadowRoute(
            config=config,
            variant=config.variant,
            pool=pool,
            served_model=variant.served_model or pool.config.served_model,
        )

    def fallback(self, route: Route) -> Route | None:
        """The flag's control variant when `route`'s pool is down; None if there is none."""
        if self._flags is None or route.reason == "static":
            return None
        flag = self._flags.snapshot().flags.get(route.model)
        if flag is None or flag.control == route.variant:
            return None
        variant = flag.variant(flag.control)
        pool = self._upstreams.pools[variant.pool]
        if pool is route.pool:
            return None
        return Route(
            model=route.model,
            flag=flag.key,
            variant=variant.name,
            flag_version=flag.version,
            reason="fallback",
            pool=pool,
            served_model=variant.served_model or pool.config.served_model,
        )
