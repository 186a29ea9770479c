"""`loopgate drift show|freeze|load`: drift scores of a running gateway and its baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
URL = typer.Option("--url", help="Gateway base URL", envvar="LOOPGATE_URL")
TOKEN = typer.Option("--token", help="Admin token", envvar="LOOPGATE_ADMIN_TOKEN")


def _call(url: str, token: str | None, method: str, path: str, body: Any = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.request(
            method, url.rstrip("/") + "/admin/drift" + path, json=body, headers=headers, timeout=30
        )
    except httpx.HTTPError as exc:
        console.print(f"[bold red]error:[/] cannot reach {url}: {exc}")
        raise typer.Exit(1) from exc
    if answer.status_code >= 400:
        try:
            message = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.text[:300]
        console.print(f"[bold red]error:[/] HTTP {answer.status_code}: {message}")
        raise typer.Exit(1)
    return answer.json()


def _table(view: dict[str, Any]) -> None:
    table = Table(title=f"drift (PSI; window {view['window']}, min samples {view['min_samples']})")
    for column in ("flag", "variant", "window", "baseline", "max PSI", "worst feature"):
        table.add_column(column)
    for p in view["profiles"]:
        psi: dict[str, float] = p["psi"] or {}
        worst = max(psi, key=lambda feature: psi[feature]) if psi else None
        table.add_row(
            p["flag"], p["variant"], str(p["window_samples"]), str(p["baseline_samples"]),
            f"{psi[worst]:.3f}" if worst else "-", worst or "-",
        )  # fmt: skip
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the drift command group."""
    drift = typer.Typer(help="Drift of prompts and answers against a frozen baseline.")
    app.add_typer(drift, name="drift")

    @drift.command()
    def show(
        url: Annotated[str, URL] = "http://127.0.0.1:8080",
        token: Annotated[str | None, TOKEN] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """PSI per flag/variant/feature, window and baseline sizes."""
        view = _call(url, token, "GET", "")
        if as_json:
            print(json.dumps(view, indent=2))
        else:
            _table(view)

    @drift.command()
    def freeze(
        url: Annotated[str, URL] = "http://127.0.0.1:8080",
        token: Annotated[str | None, TOKEN] = None,
        flag: Annotated[str | None, typer.Option(help="Only this flag's variants")] = None,
        out: Annotated[Path | None, typer.Option(help="Also save the baseline to a file")] = None,
    ) -> None:
        """Make the gateway's current windows the baseline (flag_editor role)."""
        view = _call(url, token, "POST", "/freeze", {"flag": flag})
        frozen = ", ".join(f"{f['flag']}/{f['variant']}" for f in view["frozen"]) or "nothing"
        console.print(f"froze {frozen}")
        if out is not None:
            out.write_text(json.dumps(_call(url, token, "GET", "/baseline"), indent=1))
            console.print(f"baseline saved to {out}")

    @drift.command()
    def load(
        path: Annotated[Path, typer.Argument(help="A baseline saved by freeze --out")],
        url: Annotated[str, URL] = "http://127.0.0.1:8080",
        token: Annotated[str | None, TOKEN] = None,
    ) -> None:
        """Replace the gateway's baseline with a saved one (flag_editor role)."""
        view = _call(url, token, "PUT", "/baseline", json.loads(path.read_text()))
        console.print(f"loaded {view['loaded']} baseline profiles")
