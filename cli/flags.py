"""`loopgate flags ...`: inspect and change flags via a gateway's admin API or a store directly."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import typer
from rich.console import Console
from rich.table import Table

T = TypeVar("T")
Json = dict[str, Any]


class CliError(Exception):
    """A failure to report in one line and exit 1."""


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
    who: str


class _HttpBackend:
    """The admin API of a running gateway."""

    def __init__(self, session: Any, url: str) -> None:
        self._session, self._url = session, url.rstrip("/") + "/admin/flags"

    async def _call(self, method: str, path: str = "", **kw: Any) -> Any:
        async with self._session.request(method, self._url + path, **kw) as response:
            body = await response.json(content_type=None) if response.status != 204 else None
            if response.status >= 400:
                message = (
                    (body or {}).get("error", {}).get("message") if isinstance(body, dict) else None
                )
                raise CliError(f"{response.status}: {message or response.reason}")
            return body

    async def list_flags(self) -> list[Json]:
        data: list[Json] = (await self._call("GET"))["data"]
        return data

    async def show(self, key: str) -> Json:
        flag: Json = await self._call("GET", f"/{key}")
        return flag

    async def set_weights(self, key: str, weights: dict[str, float], expected: int | None) -> Json:
        body = {"weights": weights, "expected_version": expected}
        flag: Json = await self._call("POST", f"/{key}/weights", json=body)
        return flag

    async def set_killed(self, key: str, killed: bool, expected: int | None) -> Json:
        path = f"/{key}/{'kill' if killed else 'unkill'}"
        flag: Json = await self._call("POST", path, json={"expected_version": expected})
        return flag

    async def explain(self, key: str, unit_id: str, app_id: str, attrs: dict[str, str]) -> Json:
        body = {"unit_id": unit_id, "app_id": app_id, "attributes": attrs}
        result: Json = await self._call("POST", f"/{key}/explain", json=body)
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
                created = await self._call("POST", json=flag_body(flag))
                results.append((flag.key, "create", created["version"]))
                continue
            current = parse_flag({k: v for k, v in stored.items() if k != "object"})
            if current.replace(version=1) == flag.replace(version=1):
                results.append((flag.key, "unchanged", current.version))
                continue
            body = {**flag_body(flag), "version": current.version}
            updated = await self._call("PUT", f"/{flag.key}", json=body)
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
    if target.redis is None and target.file is None:
        import aiohttp

        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        headers["X-Loopgate-Actor"] = target.who
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            yield _HttpBackend(session, target.url)
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
        yield _StoreBackend(store, target.who)


def _run(ctx: typer.Context, work: Callable[[_Backend], Awaitable[T]]) -> T:
    from router.errors import RouterError

    target: Target = ctx.obj

    async def main() -> T:
        async with _backend(target) as backend:
            return await work(backend)

    try:
        return asyncio.run(main())
    except (CliError, RouterError, OSError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _share(flag: Json) -> str:
    total = sum(v["weight"] for v in flag["variants"]) or 1
    return ", ".join(f"{v['name']} {100 * v['weight'] / total:.4g}%" for v in flag["variants"])


def _state(flag: Json) -> str:
    if not flag["enabled"]:
        return "[yellow]disabled[/yellow]"
    return "[red]killed[/red]" if flag["killed"] else "[green]live[/green]"


def _print_flag(console: Console, flag: Json) -> None:
    console.print(
        f"[bold]{flag['key']}[/bold]  version {flag['version']}  {_state(flag)}  "
        f"control={flag['control']}  owner={flag['owner'] or '-'}"
    )
    if flag["description"]:
        console.print(flag["description"])
    table = Table("variant", "pool", "served model", "weight", "share")
    total = sum(v["weight"] for v in flag["variants"]) or 1
    for v in flag["variants"]:
        share = f"{100 * v['weight'] / total:.4g}%"
        table.add_row(v["name"], v["pool"], v["served_model"] or "-", f"{v['weight']:g}", share)
    console.print(table)
    for i, rule in enumerate(flag["rules"]):
        details = ", ".join(f"{k}={v}" for k, v in rule.items() if k != "kind")
        console.print(f"rule {i}: [cyan]{rule['kind']}[/cyan] {details}")


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
        name="flags", help="Inspect and change routing flags.", no_args_is_help=True
    )
    app.add_typer(flags, name="flags")

    @flags.callback()
    def target(
        ctx: typer.Context,
        url: str = typer.Option("http://127.0.0.1:8080", help="Gateway whose admin API to use."),
        token: str | None = typer.Option(
            None, envvar="LOOPGATE_ADMIN_TOKEN", help="Admin token (flags.admin_token)."
        ),
        redis: str | None = typer.Option(None, help="Use this Redis flag store directly."),
        file: Path | None = typer.Option(None, help="Use this YAML flag file directly."),
        namespace: str = typer.Option("loopgate", help="Redis key namespace."),
        config: Path | None = typer.Option(
            None, help="Gateway config naming the pools (for --redis/--file)."
        ),
        who: str = typer.Option(getpass.getuser(), "--as", help="Name in the audit log."),
    ) -> None:
        """Talk to a gateway (--url) or straight to a store (--redis or --file)."""
        if redis is not None and file is not None:
            raise typer.BadParameter("use --redis or --file, not both")
        ctx.obj = Target(url, token, redis, file, namespace, config, who)

    @flags.command("list")
    def list_(ctx: typer.Context) -> None:
        """Every flag: state, version and split."""
        rows = _run(ctx, lambda b: b.list_flags())
        table = Table("flag", "state", "version", "split", "rules", "owner")
        for flag in rows:
            table.add_row(
                flag["key"],
                _state(flag),
                str(flag["version"]),
                _share(flag),
                str(len(flag["rules"])),
                flag["owner"] or "-",
            )
        Console().print(table)

    @flags.command()
    def show(ctx: typer.Context, key: str) -> None:
        """One flag in full."""
        _print_flag(Console(), _run(ctx, lambda b: b.show(key)))

    @flags.command("set-weights")
    def set_weights(
        ctx: typer.Context,
        key: str,
        weights: list[str] = typer.Argument(..., help="VARIANT=WEIGHT ..."),
        expected_version: int | None = typer.Option(None, help="Refuse if the flag moved on."),
    ) -> None:
        """Set variant weights, e.g. `set-weights support-bot control=50 canary=50`."""
        try:
            parsed = {k: float(v) for k, v in _pairs(weights, "WEIGHTS").items()}
        except ValueError as exc:
            raise typer.BadParameter(f"weights must be numbers: {exc}") from exc
        _print_flag(Console(), _run(ctx, lambda b: b.set_weights(key, parsed, expected_version)))

    @flags.command()
    def kill(
        ctx: typer.Context, key: str, expected_version: int | None = typer.Option(None)
    ) -> None:
        """Send all of the flag's traffic to its control variant."""
        _print_flag(Console(), _run(ctx, lambda b: b.set_killed(key, True, expected_version)))

    @flags.command()
    def unkill(
        ctx: typer.Context, key: str, expected_version: int | None = typer.Option(None)
    ) -> None:
        """Lift the kill switch."""
        _print_flag(Console(), _run(ctx, lambda b: b.set_killed(key, False, expected_version)))

    @flags.command()
    def explain(
        ctx: typer.Context,
        key: str,
        unit_id: str,
        app: str = typer.Option("admin", help="App id to evaluate for."),
        attr: list[str] = typer.Option([], help="Request attribute NAME=VALUE (repeatable)."),
    ) -> None:
        """Which variant a unit gets, and why."""
        attrs = _pairs(attr, "--attr")
        result = _run(ctx, lambda b: b.explain(key, unit_id, app, attrs))
        Console().print(
            f"{result['unit_id']} -> [bold]{result['variant']}[/bold] "
            f"(pool {result['pool']}) because [cyan]{result['reason']}[/cyan] "
            f"[flag {result['flag']} v{result['flag_version']}]"
        )

    @flags.command()
    def apply(ctx: typer.Context, path: Path) -> None:
        """Create or update the flags in a YAML file (flags not in it are left alone)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
        results = _run(ctx, lambda b: b.apply(text, str(path)))
        table = Table("flag", "action", "version")
        for key, action, version in results:
            table.add_row(key, action, str(version))
        Console().print(table)
