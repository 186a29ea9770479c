"""`loopgate flags ...`: inspect and change flags via a gateway's admin API or a store directly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import typer

from cli._common import DEFAULT_URL, AsJson, CliError, Token, Url, console, print_json, reported

if TYPE_CHECKING:
    from rich.console import Console

    from cli.admin import AdminClient

T = TypeVar("T")
Json = dict[str, Any]

Redis = Annotated[
    str | None, typer.Option(help="Use this Redis flag store directly, not a gateway.")
]
File = Annotated[Path | None, typer.Option(help="Use this YAML flag file directly, not a gateway.")]
Namespace = Annotated[str, typer.Option(help="Redis key namespace (with --redis).")]
Config = Annotated[
    Path | None, typer.Option(help="Gateway config naming the pools (with --redis or --file).")
]
Who = Annotated[
    str | None, typer.Option("--as", help="Your name in the audit log (default: $USER).")
]
Expected = Annotated[
    int | None, typer.Option(help="Refuse if the flag has moved past this version.")
]


class _Backend(Protocol):
    async def list_flags(self) -> list[Json]: ...
    async def show(self, key: str) -> Json: ...
    async def set_weights(
        self, key: str, weights: dict[str, float], expected: int | None
    ) -> Json: ...
    async def set_killed(self, key: str, killed: bool, expected: int | None) -> Json: ...
    async def explain(self, key: str, unit_id: str, app_id: str, attrs: dict[str, str]) -> Json: ...
    async def apply(self, text: str, source: str) -> list[tuple[str, str, int]]: ...


@dataclass(frozen=True)
class Target:
    """Where the commands go: a gateway URL, or a store (Redis or a file)."""

    url: str
    token: str | None
    redis: str | None
    file: Path | None
    namespace: str
    config: Path | None
    who: str | None


def _target(
    url: str,
    token: str | None,
    redis: str | None,
    file: Path | None,
    namespace: str,
    config: Path | None,
    who: str | None,
) -> Target:
    if redis is not None and file is not None:
        raise typer.BadParameter("use --redis or --file, not both")
    return Target(url, token, redis, file, namespace, config, who)


class _HttpBackend:
    """The admin API of a running gateway."""

    def __init__(self, client: AdminClient) -> None:
        self._client = client

    def _call(self, method: str, path: str = "", body: Any = None) -> Any:
        return self._client.call(method, "/admin/flags" + path, body)

    async def list_flags(self) -> list[Json]:
        data: list[Json] = self._call("GET")["data"]
        return data

    async def show(self, key: str) -> Json:
        flag: Json = self._call("GET", f"/{key}")
        return flag

    async def set_weights(self, key: str, weights: dict[str, float], expected: int | None) -> Json:
        body = {"weights": weights, "expected_version": expected}
        flag: Json = self._call("POST", f"/{key}/weights", body)
        return flag

    async def set_killed(self, key: str, killed: bool, expected: int | None) -> Json:
        path = f"/{key}/{'kill' if killed else 'unkill'}"
        flag: Json = self._call("POST", path, {"expected_version": expected})
        return flag

    async def explain(self, key: str, unit_id: str, app_id: str, attrs: dict[str, str]) -> Json:
        body = {"unit_id": unit_id, "app_id": app_id, "attributes": attrs}
        result: Json = self._call("POST", f"/{key}/explain", body)
        return result

    async def apply(self, text: str, source: str) -> list[tuple[str, str, int]]:
        from router.model import parse_flag
        from router.stores.flagfile import flag_body, parse_flags

        results: list[tuple[str, str, int]] = []
        for flag in parse_flags(text, None, source).values():
            try:
                stored = await self.show(flag.key)
            except CliError as exc:
                if not str(exc).startswith("404"):
                    raise
                created = self._call("POST", "", flag_body(flag))
                results.append((flag.key, "create", created["version"]))
                continue
            current = parse_flag({k: v for k, v in stored.items() if k != "object"})
            if current.replace(version=1) == flag.replace(version=1):
                results.append((flag.key, "unchanged", current.version))
                continue
            body = {**flag_body(flag), "version": current.version}
            updated = self._call("PUT", f"/{flag.key}", body)
            results.append((flag.key, "update", updated["version"]))
        return results


class _StoreBackend:
    """A flag store opened in this process (Redis or a file)."""

    def __init__(self, store: Any, who: str) -> None:
        self._store, self._who = store, who

    async def list_flags(self) -> list[Json]:
        from router.stores.flagfile import flag_body

        return [flag_body(f) for f in self._store.snapshot()]

    async def show(self, key: str) -> Json:
        from router import admin
        from router.stores.flagfile import flag_body

        return flag_body(await admin.current(self._store, key))

    async def set_weights(self, key: str, weights: dict[str, float], expected: int | None) -> Json:
        from router import admin
        from router.stores.flagfile import flag_body

        flag = await admin.set_weights(self._store, key, weights, expected, who=self._who)
        return flag_body(flag)

    async def set_killed(self, key: str, killed: bool, expected: int | None) -> Json:
        from router import admin
        from router.stores.flagfile import flag_body

        flag = await admin.set_killed(self._store, key, killed, expected, who=self._who)
        return flag_body(flag)

    async def explain(self, key: str, unit_id: str, app_id: str, attrs: dict[str, str]) -> Json:
        from router import admin
        from router.model import EvalContext

        ctx = EvalContext(unit_id=unit_id, app_id=app_id, model=key, attributes=attrs)
        result = admin.explain(self._store, key, ctx)
        return {
            "flag": result.flag_key,
            "flag_version": result.flag_version,
            "variant": result.variant.name,
            "pool": result.variant.pool,
            "served_model": result.variant.served_model,
            "reason": result.reason,
            "unit_id": unit_id,
        }

    async def apply(self, text: str, source: str) -> list[tuple[str, str, int]]:
        from router import admin
        from router.stores.flagfile import parse_flags

        flags = parse_flags(text, None, source).values()
        return [(k, str(a), v) for k, a, v in await admin.apply(self._store, flags, who=self._who)]


@contextlib.asynccontextmanager
async def _backend(target: Target) -> AsyncIterator[_Backend]:
    from cli.admin import AdminClient, default_actor

    who = target.who or default_actor()
    if target.redis is None and target.file is None:
        yield _HttpBackend(AdminClient(target.url, target.token, who))
        return

    from gateway.settings import load_settings
    from router.config import FlagsConfig
    from router.stores import open_store

    pools = set(load_settings(target.config).pools)
    if target.redis is not None:
        config = FlagsConfig(source="redis", redis_url=target.redis, namespace=target.namespace)
    else:
        config = FlagsConfig(source="file", path=target.file)
    async with open_store(config, pools) as store:
        yield _StoreBackend(store, who)


def _run(target: Target, work: Callable[[_Backend], Awaitable[T]]) -> T:
    import asyncio

    from gateway.settings import ConfigError
    from router.errors import RouterError

    async def main() -> T:
        async with _backend(target) as backend:
            return await work(backend)

    with reported():
        try:
            return asyncio.run(main())
        except (RouterError, ConfigError, OSError) as exc:
            raise CliError(str(exc)) from exc


def traffic(flag: Json) -> str:
    """Where the flag's traffic goes now: the split, or all of it under the kill switch."""

    if not flag["enabled"]:
        return f"all to {flag.get('default') or flag['control']}"
    if flag["killed"]:
        return f"all to {flag['control']}"
    total = sum(v["weight"] for v in flag["variants"]) or 1
    return ", ".join(f"{v['name']} {100 * v['weight'] / total:.4g}%" for v in flag["variants"])


def _state(flag: Json) -> str:
    if not flag["enabled"]:
        return "[yellow]disabled[/yellow]"
    return "[red]killed[/red]" if flag["killed"] else "[green]live[/green]"


def _print_flag(out: Console, flag: Json) -> None:
    from rich.markup import escape
    from rich.table import Table

    out.print(
        f"[bold]{escape(flag['key'])}[/bold]  version {flag['version']}  {_state(flag)}  "
        f"control={escape(flag['control'])}  owner={escape(flag['owner'] or '-')}"
    )
    if flag["description"]:
        out.print(escape(flag["description"]))
    effective = not flag["killed"] and flag["enabled"]
    if not effective:
        why, until = ("killed", "`unkill`") if flag["enabled"] else ("disabled", "it is enabled")
        out.print(
            f"[bold]traffic: {escape(traffic(flag))}[/bold] ({why}); "
            f"the weights below apply again after {until}"
        )
    table = Table("variant", "pool", "served model", "weight", "share" if effective else "split")
    total = sum(v["weight"] for v in flag["variants"]) or 1
    for v in flag["variants"]:
        share = f"{100 * v['weight'] / total:.4g}%"
        table.add_row(
            escape(v["name"]), escape(v["pool"]), escape(v["served_model"] or "-"),
            f"{v['weight']:g}", share if effective else f"[dim]{share}[/dim]",
        )  # fmt: skip
    out.print(table)
    for i, rule in enumerate(flag["rules"]):
        details = ", ".join(f"{k}={v}" for k, v in rule.items() if k != "kind")
        out.print(f"rule {i}: [cyan]{rule['kind']}[/cyan] {escape(details)}")
    if flag.get("shadow"):
        out.print(shadow_line(flag))


def shadow_line(flag: Json) -> str:
    """The flag's shadow settings in one line (markup), and whether they apply now."""
    from rich.markup import escape

    sh = flag["shadow"]
    budget = (
        f"{sh['tokens_per_minute']:,} tokens/min"
        if sh.get("tokens_per_minute")
        else "no token budget"
    )
    off = ""
    if not flag["enabled"] or flag["killed"]:
        off = f" [yellow](off: the flag is {'killed' if flag['enabled'] else 'disabled'})[/yellow]"
    return (
        f"shadow: [cyan]{escape(sh['variant'])}[/cyan] answers {100 * sh['share']:.4g}% of units "
        f"unseen; at most {sh['max_in_flight']} in flight, timeout {sh['timeout_s']:g}s, "
        f"{'streamed' if sh['stream'] else 'not streamed'}, {budget}{off}"
    )


def _show_flag(flag: Json, as_json: bool) -> None:
    if as_json:
        print_json(flag)
    else:
        _print_flag(console(), flag)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=what)
        pairs[name] = value
    return pairs


def register(app: typer.Typer) -> None:
    """Add the `flags` command group."""
    flags = typer.Typer(
        name="flags",
        help="Inspect and change routing flags, through a gateway (--url) or a store "
        "(--redis or --file).",
        no_args_is_help=True,
    )
    app.add_typer(flags, name="flags")

    @flags.command("list")
    def list_(
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        redis: Redis = None,
        file: File = None,
        namespace: Namespace = "loopgate",
        config: Config = None,
        who: Who = None,
    ) -> None:
        """Every flag: state, version and where its traffic goes. Role: viewer."""
        target = _target(url, token, redis, file, namespace, config, who)
        rows = _run(target, lambda b: b.list_flags())
        if as_json:
            print_json({"data": rows})
            return
        from rich.markup import escape
        from rich.table import Table

        table = Table("flag", "state", "version", "traffic", "rules", "owner")
        for flag in rows:
            table.add_row(
                escape(flag["key"]),
                _state(flag),
                str(flag["version"]),
                escape(traffic(flag)),
                str(len(flag["rules"])),
                escape(flag["owner"] or "-"),
            )
        console().print(table)

    @flags.command()
    def show(
        key: str,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        redis: Redis = None,
        file: File = None,
        namespace: Namespace = "loopgate",
        config: Config = None,
        who: Who = None,
    ) -> None:
        """One flag in full. Role: viewer."""
        target = _target(url, token, redis, file, namespace, config, who)
        _show_flag(_run(target, lambda b: b.show(key)), as_json)

    @flags.command("set-weights")
    def set_weights(
        key: str,
        weights: Annotated[list[str], typer.Argument(help="VARIANT=WEIGHT ...")],
        expected_version: Expected = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        redis: Redis = None,
        file: File = None,
        namespace: Namespace = "loopgate",
        config: Config = None,
        who: Who = None,
    ) -> None:
        """Set variant weights, e.g. `set-weights support-bot control=50 canary=50`.

        Role: flag_editor.
        """
        try:
            parsed = {k: float(v) for k, v in _pairs(weights, "WEIGHTS").items()}
        except ValueError as exc:
            raise typer.BadParameter(f"weights must be numbers: {exc}") from exc
        target = _target(url, token, redis, file, namespace, config, who)
        _show_flag(_run(target, lambda b: b.set_weights(key, parsed, expected_version)), as_json)

    @flags.command()
    def kill(
        key: str,
        expected_version: Expected = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        redis: Redis = None,
        file: File = None,
        namespace: Namespace = "loopgate",
        config: Config = None,
        who: Who = None,
    ) -> None:
        """Send all of the flag's traffic to its control variant. Role: flag_editor."""
        target = _target(url, token, redis, file, namespace, config, who)
        _show_flag(_run(target, lambda b: b.set_killed(key, True, expected_version)), as_json)

    @flags.command()
    def unkill(
        key: str,
        expected_version: Expected = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        redis: Redis = None,
        file: File = None,
        namespace: Namespace = "loopgate",
        config: Config = None,
        who: Who = None,
    ) -> None:
        """Lift the kill switch: the split applies again. Role: flag_editor."""
        target = _target(url, token, redis, file, namespace, config, who)
        _show_flag(_run(target, lambda b: b.set_killed(key, False, expected_version)), as_json)

    @flags.command()
    def explain(
        key: str,
        unit_id: str,
        app: Annotated[str, typer.Option(help="App id to evaluate for.")] = "admin",
        attr: Annotated[
            list[str] | None, typer.Option(help="Request attribute NAME=VALUE (repeatable).")
        ] = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        redis: Redis = None,
        file: File = None,
        namespace: Namespace = "loopgate",
        config: Config = None,
        who: Who = None,
    ) -> None:
        """Which variant a unit gets, and why. Role: viewer."""
        attrs = _pairs(attr or [], "--attr")
        target = _target(url, token, redis, file, namespace, config, who)
        result = _run(target, lambda b: b.explain(key, unit_id, app, attrs))
        if as_json:
            print_json(result)
            return
        from rich.markup import escape

        console().print(
            f"{escape(result['unit_id'])} -> [bold]{escape(result['variant'])}[/bold] "
            f"(pool {escape(result['pool'])}) because [cyan]{result['reason']}[/cyan] "
            f"[flag {escape(result['flag'])} v{result['flag_version']}]"
        )

    @flags.command()
    def apply(
        path: Path,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        redis: Redis = None,
        file: File = None,
        namespace: Namespace = "loopgate",
        config: Config = None,
        who: Who = None,
    ) -> None:
        """Create or update the flags in a YAML file (flags not in it are left alone).

        Role: flag_editor.
        """
        try:
            text = path.read_text()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
        target = _target(url, token, redis, file, namespace, config, who)
        results = _run(target, lambda b: b.apply(text, str(path)))
        if as_json:
            print_json({"data": [{"flag": k, "action": a, "version": v} for k, a, v in results]})
            return
        from rich.table import Table

        table = Table("flag", "action", "version")
        for key, action, version in results:
            table.add_row(key, action, str(version))
        console().print(table)
