"""`loopgate rollout status|set|resume|remove` and `loopgate controller` (the rollout loop)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cli.experiments import (
    DECISION_STYLE,
    DEFAULT_URL,
    TOKEN_OPTION,
    URL_OPTION,
    CliError,
    admin_call,
)

console = Console()
Json = dict[str, Any]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:g}%"


def rollout_panel(doc: Json, history: int = 10) -> Group:
    """Plan, current step and status, last decision and the latest history entries."""
    plan, state = doc["plan"], doc.get("state") or {}
    steps = plan["steps"]
    current = state.get("step", -1)
    ladder = Text("steps: ")
    for i, step in enumerate(steps):
        style = "bold reverse" if i == current else ("green" if i < current else "dim")
        ladder.append(f" {step:g}% ", style=style)
        if i < len(steps) - 1:
            ladder.append("→", style="dim")
    status: str = state.get("status") or "not started"
    status_style = {"promoted": "bold green", "rolled_back": "bold red", "paused": "yellow"}
    head = Text()
    head.append(f"rollout {doc['flag']}: ", style="bold")
    head.append(f"{plan['canary']} vs {plan['control']}   ")
    head.append(status, style=status_style.get(status, "cyan"))
    head.append(f"   canary share {_share(state.get('share'))}")
    head.append(
        f"   per step ≥ {plan['min_duration_s']:g} s, ≥ {plan['min_exposures']} exposures;"
        f" ≥ {plan['min_feedback']} feedback per arm; primary: {plan['primary']}",
        style="dim",
    )
    last = Text()
    if state.get("last_decision"):
        decision = state["last_decision"]
        last.append("last decision: ", style="bold")
        shown = "not enough data yet" if decision == "insufficient_data" else decision
        last.append(shown, style=DECISION_STYLE.get(decision, ""))
        last.append(f" at {_when(state.get('checked_at'))}\n", style="dim")
        for reason in state.get("last_reasons", [])[:6]:
            last.append(f"  • {reason}\n")
    table = Table("time", "action", "share", "version", "p", title="history", expand=True)
    table.add_column("why", overflow="ellipsis", no_wrap=True, ratio=1)
    for entry in list(state.get("history", []))[-history:]:
        action = entry["action"]
        colour = {"rollback": "bold red", "promote": "bold green", "advance": "green"}.get(action)
        table.add_row(
            _when(entry["time"]),
            Text(action, style=colour or ""),
            f"{_share(entry.get('from_share'))} → {_share(entry.get('to_share'))}",
            str(entry.get("flag_version") or "-"),
            "-" if entry.get("p_value") is None else f"{entry['p_value']:.3g}",
            "; ".join(entry.get("reasons", []))[:160],
        )
    return Group(head, ladder, last, table)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except CliError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc


def _plan_body(
    file: Path | None,
    control: str | None,
    canary: str | None,
    steps: str | None,
    options: dict[str, Any],
) -> Json:
    body: Json = yaml.safe_load(file.read_text()) if file else {}
    if control:
        body["control"] = control
    if canary:
        body["canary"] = canary
    if steps:
        body["steps"] = [float(s) for s in steps.split(",") if s.strip()]
    body.update({k: v for k, v in options.items() if v is not None})
    return body


def register(app: typer.Typer) -> None:
    """Add `loopgate rollout` and `loopgate controller`."""
    group = typer.Typer(help="Rollout plans and their progress.", no_args_is_help=True)
    app.add_typer(group, name="rollout")

    @group.command("status")
    def status(
        flag: str,
        url: Annotated[str, URL_OPTION] = DEFAULT_URL,
        token: Annotated[str | None, TOKEN_OPTION] = None,
        history: Annotated[int, typer.Option(help="History entries to show")] = 20,
    ) -> None:
        """The plan, the current step and the history of the controller's actions."""
        doc = _run(admin_call(url, token, "GET", f"/admin/experiments/{flag}/rollout"))
        console.print(rollout_panel(doc, history))

    @group.command("set")
    def set_plan(
        flag: str,
        file: Annotated[
            Path | None, typer.Option(help="Plan as YAML (fields of RolloutPlan)")
        ] = None,
        control: Annotated[str | None, typer.Option(help="Control variant")] = None,
        canary: Annotated[str | None, typer.Option(help="Canary variant")] = None,
        steps: Annotated[
            str | None, typer.Option(help="Canary percentages, e.g. 1,5,25,50,100")
        ] = None,
        min_duration: Annotated[float | None, typer.Option(help="Seconds per step")] = None,
        min_exposures: Annotated[int | None, typer.Option(help="Canary exposures per step")] = None,
        min_feedback: Annotated[int | None, typer.Option(help="Feedback per arm")] = None,
        url: Annotated[str, URL_OPTION] = DEFAULT_URL,
        token: Annotated[str | None, TOKEN_OPTION] = None,
    ) -> None:
        """Put a rollout plan on a flag (the controller starts it at the first step)."""
        options = {
            "min_duration_s": min_duration,
            "min_exposures": min_exposures,
            "min_feedback": min_feedback,
        }
        body = _plan_body(file, control, canary, steps, options)
        doc = _run(admin_call(url, token, "PUT", f"/admin/experiments/{flag}/rollout", body))
        console.print(rollout_panel(doc))

    @group.command("resume")
    def resume(
        flag: str,
        url: Annotated[str, URL_OPTION] = DEFAULT_URL,
        token: Annotated[str | None, TOKEN_OPTION] = None,
    ) -> None:
        """Resume a paused rollout from the flag's current weights."""
        _run(admin_call(url, token, "POST", f"/admin/experiments/{flag}/rollout/resume"))
        console.print(f"rollout {flag}: running")

    @group.command("remove")
    def remove(
        flag: str,
        url: Annotated[str, URL_OPTION] = DEFAULT_URL,
        token: Annotated[str | None, TOKEN_OPTION] = None,
    ) -> None:
        """Remove the plan (the flag keeps its weights)."""
        _run(admin_call(url, token, "DELETE", f"/admin/experiments/{flag}/rollout"))
        console.print(f"rollout {flag}: plan removed")

    @app.command("controller")
    def controller(
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="YAML config (the gateway's)")
        ] = None,
        interval: Annotated[float | None, typer.Option(help="Seconds between looks")] = None,
        once: Annotated[bool, typer.Option("--once", help="One pass, then exit")] = False,
        metrics_port: Annotated[int, typer.Option(help="Serve /metrics here (0: off)")] = 0,
        metrics_host: Annotated[
            str, typer.Option(help="Address /metrics listens on (0.0.0.0 in a pod)")
        ] = "127.0.0.1",
        log_level: Annotated[str, typer.Option(help="Log level")] = "info",
    ) -> None:
        """The rollout controller: one per deployment; a second copy waits on the Redis lock."""
        from gateway.settings import ConfigError, load_settings

        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        if not settings.experiments.redis_url or settings.flags.source != "redis":
            console.print(
                "[bold red]error:[/] `loopgate controller` reads the counters every gateway "
                "writes: set experiments.redis_url and flags.source: redis. With one gateway "
                "process, set experiments.controller.in_process: true instead."
            )
            raise typer.Exit(2)
        asyncio.run(_controller_main(settings, interval, once, metrics_port, metrics_host))


async def _controller_main(
    settings: Any, interval: float | None, once: bool, port: int, host: str = "127.0.0.1"
) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from redis.asyncio import Redis

    from feedback.emitter import open_pipeline
    from gateway.events import audit_event
    from rollout.controller import Controller, ControllerMetrics, run_controller
    from rollout.counters import ExperimentCounters, RedisCounterBackend
    from rollout.lock import RedisLock
    from rollout.store import RedisPlanStore
    from router.stores import open_store
    from router.stores.base import AuditRecord, log_audit

    cfg = settings.experiments
    registry = CollectorRegistry()
    if port:
        from gateway.metrics import without_created

        start_http_server(port, addr=host, registry=without_created(registry))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        events = await stack.enter_async_context(
            open_pipeline(settings.events, settings.instance + "-controller")
        )

        def audit(record: AuditRecord) -> None:
            log_audit(record)
            events.emit(audit_event(record, instance=settings.instance))

        flags = await stack.enter_async_context(
            open_store(settings.flags, set(settings.pools), on_audit=audit)
        )
        counters = ExperimentCounters(RedisCounterBackend(cfg.redis_url, cfg.namespace, cfg.ttl_s))
        stack.push_async_callback(counters.backend.aclose)
        plans = RedisPlanStore(cfg.redis_url, cfg.namespace)
        stack.push_async_callback(plans.aclose)
        for plan in cfg.plans:
            if await plans.plan(plan.flag) is None:
                await plans.put_plan(plan)
        ctl = Controller(flags, counters, plans, metrics=ControllerMetrics(registry))
        redis: Any = Redis.from_url(cfg.redis_url)
        stack.push_async_callback(redis.aclose)
        lock = RedisLock(redis, f"{cfg.namespace}:rollout:lock", cfg.controller.lock_ttl_s,
                         settings.instance)  # fmt: skip
        if once:
            if not await lock.hold():
                console.print("another controller holds the lock; nothing done")
                return
            await ctl.tick()
            await counters.flush()
            await lock.release()
            return
        every = interval or cfg.controller.interval_s
        await run_controller(ctl, every, lock, renew_every=cfg.controller.lock_ttl_s / 3, stop=stop)
        await counters.flush()
