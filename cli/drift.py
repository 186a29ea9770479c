"""`loopgate drift show|freeze|load`: drift scores of a running gateway and its baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._common import DEFAULT_URL, AsJson, CliError, Token, Url, console, print_json, reported


def _table(view: dict[str, Any]) -> None:
    from rich.table import Table

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
    console().print(table)


def register(app: typer.Typer) -> None:
    """Add the drift command group."""
    drift = typer.Typer(
        help="Drift of prompts and answers against a frozen baseline.", no_args_is_help=True
    )
    app.add_typer(drift, name="drift")

    @drift.command()
    def show(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
        """PSI per flag/variant/feature, window and baseline sizes. Role: viewer."""
        from cli.admin import AdminClient

        with reported():
            view = AdminClient(url, token).get("/admin/drift")
        if as_json:
            print_json(view)
        else:
            _table(view)

    @drift.command()
    def freeze(
        flag: Annotated[str | None, typer.Option(help="Only this flag's variants")] = None,
        out: Annotated[Path | None, typer.Option(help="Also save the baseline to a file")] = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
    ) -> None:
        """Make the gateway's current windows the baseline. Role: flag_editor."""
        from cli.admin import AdminClient

        client = AdminClient(url, token)
        with reported():
            view = client.post("/admin/drift/freeze", {"flag": flag})
            baseline = client.get("/admin/drift/baseline") if out is not None else None
            if out is not None:
                try:
                    out.write_text(json.dumps(baseline, indent=1))
                except OSError as exc:
                    raise CliError(f"cannot write {out}: {exc.strerror}") from exc
        if as_json:
            print_json(view)
            return
        frozen = ", ".join(f"{f['flag']}/{f['variant']}" for f in view["frozen"]) or "nothing"
        console().print(f"froze {frozen}")
        if out is not None:
            console().print(f"baseline saved to {out}")

    @drift.command()
    def load(
        path: Annotated[Path, typer.Argument(help="A baseline saved by freeze --out")],
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Replace the gateway's baseline with a saved one. Role: flag_editor."""
        from cli.admin import AdminClient

        with reported():
            try:
                baseline = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CliError(f"cannot read a baseline from {path}: {exc}", code=2) from exc
            view = AdminClient(url, token).put("/admin/drift/baseline", baseline)
        console().print(f"loaded {view['loaded']} baseline profiles")
