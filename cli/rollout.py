"""`loopgate rollout status|set|resume|remove` and `loopgate controller` (the rollout loop)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli._common import (
    DEFAULT_URL,
    AsJson,
    CliError,
    Token,
    Url,
    console,
    err_console,
    fail,
    print_json,
    reported,
)

if TYPE_CHECKING:
    from rich.console import Group

    from cli.admin import AdminClient

Json = dict[str, Any]
STATUS_STYLE = {"promoted": "bold green", "rolled_back": "bold red", "paused": "yellow"}
ACTION_STYLE = {"rollback": "bold red", "promote": "bold green", "advance": "green"}
FILE = "--file"
WIDE = 110  # below this the history is stacked, one entry per two lines


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:g}%"


def _history(entries: list[Json], width: int) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not entries:
        return Text("no actions yet", style="dim")
    if width >= WIDE:
        table = Table("time", "action", "share", "version", "p", title="history", expand=True)
        table.add_column("why", overflow="fold", ratio=1)
        for entry in entries:
            action = entry["action"]
            table.add_row(
                _when(entry["time"]),
                Text(action, style=ACTION_STYLE.get(action, "")),
                f"{_share(entry.get('from_share'))} → {_share(entry.get('to_share'))}",
                str(entry.get("flag_version") or "-"),
                "-" if entry.get("p_value") is None else f"{entry['p_value']:.3g}",
                "; ".join(entry.get("reasons", [])),
            )
        return table
    # Stacked: the time, then what happened and why, wrapping under itself.
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for entry in entries:
        action = entry["action"]
        line = Text(action, style=ACTION_STYLE.get(action, ""))
        line.append(f" {_share(entry.get('from_share'))} → {_share(entry.get('to_share'))}")
        if entry.get("flag_version"):
            line.append(f"  v{entry['flag_version']}", style="dim")
        if entry.get("p_value") is not None:
            line.append(f"  p {entry['p_value']:.3g}", style="dim")
        if entry.get("reasons"):
            line.append("\n" + "; ".join(entry["reasons"]), style="dim")
        grid.add_row(_when(entry["time"]), line)
    return Group(Text("history", style="bold"), grid)


def rollout_panel(doc: Json, width: int, history: int = 10) -> Group:
    """Plan, current step and status, last decision and the latest history entries."""
    from rich.console import Group
    from rich.text import Text

    from cli.experiments import DECISION_STYLE, bullets

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
    head = Text()
    head.append(f"rollout {doc['flag']}: ", style="bold")
    head.append(f"{plan['canary']} vs {plan['control']}   ")
    head.append(status, style=STATUS_STYLE.get(status, "cyan"))
    head.append(f"   canary share {_share(state.get('share'))}\n")
    head.append(
        f"per step ≥ {plan['min_duration_s']:g} s, ≥ {plan['min_exposures']} exposures;"
        f" ≥ {plan['min_feedback']} feedback per arm; primary: {plan['primary']}",
        style="dim",
    )
    last = Text()
    if state.get("last_decision"):
        decision = state["last_decision"]
        last.append("last decision: ", style="bold")
        shown = "not enough data yet" if decision == "insufficient_data" else decision
        last.append(shown, style=DECISION_STYLE.get(decision, ""))
        last.append(f" at {_when(state.get('checked_at'))}", style="dim")
    reasons = bullets(list(state.get("last_reasons", []))[:6])
    entries = list(state.get("history", []))[-history:] if history > 0 else []
    return Group(head, ladder, last, reasons, _history(entries, width))


def parse_steps(text: str) -> list[float]:
    """`1,5,25,100` -> [1, 5, 25, 100]; a clean error for anything else."""
    steps = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise typer.BadParameter(
                f"{text!r} has an empty step: give percentages like 1,5,25,50,100",
                param_hint="--steps",
            )
        try:
            value = float(item.removesuffix("%"))
        except ValueError:
            raise typer.BadParameter(
                f"{item!r} is not a number: give percentages like 1,5,25,50,100",
                param_hint="--steps",
            ) from None
        steps.append(value)
    return steps


def _plan_body(
    file: Path | None,
    control: str | None,
    canary: str | None,
    steps: list[float] | None,
    options: dict[str, Any],
) -> Json:
    import yaml

    body: Json = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {file}: {exc}", param_hint=FILE) from exc
        except yaml.YAMLError as exc:
            raise typer.BadParameter(f"{file} is not YAML: {exc}", param_hint=FILE) from exc
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{file} holds no plan (a mapping)", param_hint=FILE)
        body = loaded
    if control:
        body["control"] = control
    if canary:
        body["canary"] = canary
    if steps:
        body["steps"] = steps
    body.update({k: v for k, v in options.items() if v is not None})
    return body


def _checked_plan(flag: str, body: Json) -> Any:
    """The plan as the gateway will read it, or a clean error before anything is sent."""
    from pydantic import ValidationError

    from rollout.plan import RolloutPlan

    try:
        return RolloutPlan.model_validate({**body, "flag": flag})
    except ValidationError as exc:
        item = exc.errors()[0]
        where = ".".join(str(p) for p in item["loc"]) or "plan"
        raise CliError(f"plan: {where}: {item['msg']}", code=2) from None


def arms(flag: Json, rollout: Json | None) -> dict[str, str]:
    """Control and canary when not given: the current plan's, else the flag's control and
    its heaviest other variant (as the gateway's default experiment view picks them)."""
    if rollout is not None:
        return {"control": rollout["plan"]["control"], "canary": rollout["plan"]["canary"]}
    others = [v for v in flag["variants"] if v["name"] != flag["control"]]
    if not others:
        return {"control": flag["control"]}
    return {"control": flag["control"], "canary": max(others, key=lambda v: v["weight"])["name"]}


def canary_share_of(flag: Json, canary: str) -> float:
    """The canary's share (percent) of the flag's traffic now: 0 when killed or disabled."""
    total = float(sum(v["weight"] for v in flag["variants"]))
    if flag["killed"] or not flag["enabled"] or total <= 0:
        return 0.0
    weight = float(next((v["weight"] for v in flag["variants"] if v["name"] == canary), 0.0))
    return 100.0 * weight / total


def _current_rollout(client: AdminClient, flag: str) -> Json | None:
    try:
        doc: Json = client.get(f"/admin/experiments/{flag}/rollout")
    except CliError as exc:
        if str(exc).startswith("404"):
            return None
        raise
    return doc


def plan_effect(flag: str, plan: Any, flag_doc: Json, rollout: Json | None) -> Json:
    """What putting `plan` on the flag does: the controller restarts it at its first step."""
    now = canary_share_of(flag_doc, plan.canary)
    state = (rollout or {}).get("state") or {}
    first = float(plan.steps[0])
    return {
        "flag": flag,
        "plan": plan.model_dump(mode="json", exclude={"flag"}),
        "replaces": None if rollout is None else {
            "status": state.get("status") or "not started",
            "step": state.get("step", -1),
            "steps": rollout["plan"]["steps"],
        },
        "canary_share_now": now,
        "canary_share_next": first,
        "lowers_live_share": first < now - 0.01,
    }  # fmt: skip


def _describe(effect: Json) -> str:
    from rich.markup import escape

    plan = effect["plan"]
    lines = [
        f"rollout {escape(effect['flag'])}: {escape(plan['canary'])} vs "
        f"{escape(plan['control'])}, steps " + " → ".join(f"{s:g}%" for s in plan["steps"]),
        f"now: the canary has {effect['canary_share_now']:.4g}% of the flag's traffic",
    ]
    old = effect["replaces"]
    if old is not None and old["step"] >= 0:
        lines.append(
            f"replaces: a {old['status']} rollout at step {old['step'] + 1} of "
            f"{len(old['steps'])}; its history is dropped"
        )
    elif old is not None:
        lines.append("replaces: a plan the controller has not started yet")
    verb = "[bold red]lowers[/]" if effect["lowers_live_share"] else "sets"
    lines.append(
        f"then: the controller restarts at step 1 and {verb} the canary's share "
        f"{effect['canary_share_now']:.4g}% → {effect['canary_share_next']:g}%"
    )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add `loopgate rollout` and `loopgate controller`."""
    group = typer.Typer(help="Rollout plans and their progress.", no_args_is_help=True)
    app.add_typer(group, name="rollout")

    @group.command("status")
    def status(
        flag: str,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
        history: Annotated[int, typer.Option(help="History entries to show")] = 20,
    ) -> None:
        """The plan, the current step and the history of the controller's actions.

        Role: viewer.
        """
        from cli.admin import AdminClient

        with reported():
            doc = AdminClient(url, token).get(f"/admin/experiments/{flag}/rollout")
        if as_json:
            print_json(doc)
            return
        out = console()
        out.print(rollout_panel(doc, out.width, history))

    @group.command("set")
    def set_plan(
        flag: str,
        file: Annotated[
            Path | None, typer.Option(help="Plan as YAML (fields of RolloutPlan)")
        ] = None,
        control: Annotated[
            str | None, typer.Option(help="Control variant [default: the flag's control]")
        ] = None,
        canary: Annotated[
            str | None, typer.Option(help="Canary variant [default: its heaviest other]")
        ] = None,
        steps: Annotated[
            str | None, typer.Option(help="Canary percentages, e.g. 1,5,25,50,100")
        ] = None,
        min_duration: Annotated[float | None, typer.Option(help="Seconds per step")] = None,
        min_exposures: Annotated[int | None, typer.Option(help="Canary exposures per step")] = None,
        min_feedback: Annotated[int | None, typer.Option(help="Feedback per arm")] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
        ] = False,
        yes: Annotated[
            bool, typer.Option("--yes", "-y", help="Lower a live canary share without asking.")
        ] = False,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
    ) -> None:
        """Put a rollout plan on a flag; the controller (re)starts it at its first step.

        Asks before lowering a live canary's share (--yes to skip). Role: flag_editor.
        """
        from cli.admin import AdminClient

        options = {
            "min_duration_s": min_duration,
            "min_exposures": min_exposures,
            "min_feedback": min_feedback,
        }
        parsed = parse_steps(steps) if steps is not None else None
        body = _plan_body(file, control, canary, parsed, options)
        client = AdminClient(url, token)
        with reported():
            flag_doc = client.get(f"/admin/flags/{flag}")
            current = _current_rollout(client, flag)
            body = {**arms(flag_doc, current), **body}
            plan = _checked_plan(flag, body)
            effect = plan_effect(flag, plan, flag_doc, current)
            if dry_run:
                if as_json:
                    print_json({**effect, "dry_run": True})
                else:
                    console().print(_describe(effect) + "\n[yellow]dry run: nothing changed[/]")
                return
            if effect["lowers_live_share"] and not yes:
                err_console().print(_describe(effect))
                if not _confirm(
                    f"Lower the live canary share of {flag} from "
                    f"{effect['canary_share_now']:.4g}% to {effect['canary_share_next']:g}%?"
                ):
                    raise CliError("nothing changed")
            doc = client.put(f"/admin/experiments/{flag}/rollout", body)
        if as_json:
            print_json(doc)
            return
        out = console()
        out.print(rollout_panel(doc, out.width))

    @group.command("resume")
    def resume(
        flag: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False
    ) -> None:
        """Resume a paused rollout from the flag's current weights. Role: flag_editor."""
        from cli.admin import AdminClient

        with reported():
            doc = AdminClient(url, token).post(f"/admin/experiments/{flag}/rollout/resume")
        if as_json:
            print_json(doc)
            return
        console().print(f"rollout {flag}: running")

    @group.command("remove")
    def remove(flag: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
        """Remove the plan (the flag keeps its weights). Role: flag_editor."""
        from cli.admin import AdminClient

        with reported():
            AdminClient(url, token).delete(f"/admin/experiments/{flag}/rollout")
        console().print(f"rollout {flag}: plan removed")

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
        import asyncio

        from gateway.settings import ConfigError, load_settings

        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            raise fail(CliError(str(exc), code=2)) from exc
        if not settings.experiments.redis_url or settings.flags.source != "redis":
            raise fail(
                CliError(
                    "`loopgate controller` reads the counters every gateway writes: set "
                    "experiments.redis_url and flags.source: redis. With one gateway process, "
                    "set experiments.controller.in_process: true instead.",
                    code=2,
                )
            )
        asyncio.run(_controller_main(settings, interval, once, metrics_port, metrics_host))


async def _controller_main(
    settings: Any, interval: float | None, once: bool, port: int, host: str = "127.0.0.1"
) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry, start_http_server
    from redis.asyncio import Redis

    from feedback.emitter import open_pipeline
    from gateway.events import audit_event
    from rollout.controller import Controller, ControllerMetrics, run_controller
    from rollout.counters import ExperimentCounters
    from rollout.stores.counters import RedisCounterBackend
    from rollout.stores.lock import RedisLock
    from rollout.stores.plans import RedisPlanStore
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
                console().print("another controller holds the lock; nothing done")
                return
            await ctl.tick()
            await counters.flush()
            await lock.release()
            return
        every = interval or cfg.controller.interval_s
        await run_controller(ctl, every, lock, renew_every=cfg.controller.lock_ttl_s / 3, stop=stop)
        await counters.flush()


def _confirm(question: str) -> bool:
    """Ask on the terminal; no answer (no terminal, end of input) is no."""

    try:
        return typer.confirm(question, default=False, err=True)
    except typer.Abort:  # end of input: the prompt's line is still open
        typer.echo(err=True)
        return False
