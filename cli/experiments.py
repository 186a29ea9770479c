"""`loopgate experiments list|show`: per-variant statistics and the decision so far, as tables."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

console = Console()
Json = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:8080"
URL_OPTION = typer.Option("--url", help="Gateway base URL", envvar="LOOPGATE_URL")
TOKEN_OPTION = typer.Option(
    "--token", help="Admin token (viewer role is enough)", envvar="LOOPGATE_ADMIN_TOKEN"
)


class CliError(Exception):
    """A failure to report in one line and exit 1."""


async def admin_call(
    url: str, token: str | None, method: str, path: str, body: Json | None = None
) -> Any:
    """One admin API call; raises CliError with the gateway's message on failure."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["X-Loopgate-Actor"] = os.environ.get("USER", "cli")
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
            session.request(method, url.rstrip("/") + path, json=body) as response,
        ):
            doc = await response.json(content_type=None) if response.status != 204 else None
            if response.status >= 400:
                err = doc.get("error", {}) if isinstance(doc, dict) else {}
                raise CliError(f"{response.status}: {err.get('message') or response.reason}")
            return doc
    except aiohttp.ClientError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from exc


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _interval(iv: Json | None, signed: bool = False) -> str:
    if not iv:
        return "-"
    sign = "+" if signed else ""
    return (
        f"{100 * iv['estimate']:{sign}.1f}% "
        f"[{100 * iv['low']:{sign}.0f}, {100 * iv['high']:{sign}.0f}]"
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f} ms"


DECISION_STYLE = {
    "insufficient_data": "yellow",
    "hold": "yellow",
    "advance": "green",
    "promote": "bold green",
    "rollback": "bold red",
}


def experiment_table(view: Json) -> Table:
    """Per variant: weight, exposures, feedback, share with interval, lift, p, errors, p95."""
    report, metrics = view["report"], {m["name"]: m for m in view["metrics"]}
    weights = view["phases"][-1]["weights"] if view["phases"] else {}
    total_w = sum(weights.values()) or 1.0
    table = Table(title=f"experiment [bold]{view['flag']}[/]", title_justify="left")
    for name, justify in [
        ("variant", "left"), ("weight", "right"), ("exposures", "right"), ("units", "right"),
        ("up/down", "right"), ("up share [95%]", "right"), ("lift [95%]", "right"),
        ("p", "right"), ("edits", "right"), ("regens", "right"), ("errors", "right"),
        ("p95", "right"),
    ]:  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for v in report["variants"]:
        m = metrics.get(v["name"], {})
        fb = m.get("feedback", {})
        role = {report["control"]: "control", report["canary"]: "canary"}.get(v["name"])
        label = v["name"] if role in (None, v["name"]) else f"{v['name']} ({role})"
        seq = v.get("sequential")
        table.add_row(
            label,
            _pct(weights.get(v["name"], 0.0) / total_w, 0) if weights else "-",
            str(v["exposures"]),
            "-" if v["units"] is None else str(v["units"]),
            f"{v['positive']} / {v['negative']}",
            _interval(v["share"]),
            _interval(v.get("difference"), signed=True),
            f"{seq['p_value']:.3g}" if seq else "-",
            str(fb.get("edit", 0)),
            str(fb.get("regenerate", 0)),
            _pct(m.get("error_rate")),
            _ms(m.get("latency_p95")),
        )
    return table


def decision_text(view: Json) -> Text:
    """The decision so far, why, and the sample ratio check."""
    report = view["report"]
    decision = report["decision"]
    text = Text()
    label = "not enough data yet" if decision == "insufficient_data" else decision
    text.append("decision: ", style="bold")
    text.append(label, style=DECISION_STYLE.get(decision, ""))
    srm = report["srm"]
    text.append(
        f"   SRM chi² {srm['statistic']:.2f} on {srm['df']} df, p = {srm['p_value']:.3g}"
        f"   always-valid p = {report['p_value']:.3g}\n",
        style="dim",
    )
    for reason in report["reasons"]:
        text.append(f"  • {reason}\n")
    return text


def experiment_panel(view: Json) -> Group:
    """Table plus decision: what `experiments show` prints and the demo redraws."""
    return Group(experiment_table(view), decision_text(view))


def register(app: typer.Typer) -> None:
    """Add `loopgate experiments`."""
    group = typer.Typer(help="Experiment statistics per flag.", no_args_is_help=True)
    app.add_typer(group, name="experiments")

    def run(coro: Any) -> Any:
        try:
            return asyncio.run(coro)
        except CliError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from exc

    @group.command("show")
    def show(
        flag: str,
        url: Annotated[str, URL_OPTION] = DEFAULT_URL,
        token: Annotated[str | None, TOKEN_OPTION] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the raw report")] = False,
    ) -> None:
        """Per variant exposures, feedback, shares, lift vs control and the decision so far."""
        view = run(admin_call(url, token, "GET", f"/admin/experiments/{flag}"))
        if json_out:
            console.print_json(data=view)
            return
        console.print(experiment_panel(view))

    @group.command("list")
    def list_(
        url: Annotated[str, URL_OPTION] = DEFAULT_URL,
        token: Annotated[str | None, TOKEN_OPTION] = None,
    ) -> None:
        """Flags with counts or a rollout plan."""
        doc = run(admin_call(url, token, "GET", "/admin/experiments"))
        table = Table("flag", "plan", "status", "canary share", "last decision")
        for row in doc["data"]:
            share = row["share"]
            table.add_row(
                row["flag"],
                "yes" if row["planned"] else "no",
                row["status"] or "-",
                "-" if share is None else f"{share:g}%",
                row["last_decision"] or "-",
            )
        console.print(table)
