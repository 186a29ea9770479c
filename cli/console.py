"""`loopgate console --gateway URL`: the web console alone, off the serving replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the console command."""

    @app.command()
    def console(
        gateway: Annotated[
            str, typer.Option(help="The gateway whose admin API the console acts through.")
        ],
        config: Annotated[
            Path | None,
            typer.Option(
                "--config", "-c", help="YAML config: its console, events and ids sections"
            ),
        ] = None,
        host: Annotated[str, typer.Option(help="Listen address")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Listen port")] = 8090,
        log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    ) -> None:
        """Run the console on its own; it changes flags only through the gateway's admin API."""
        import uvicorn
        from rich.console import Console

        from console.app import create_console_app
        from gateway.settings import ConfigError, load_settings

        out = Console()
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            out.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        if not gateway.startswith(("http://", "https://")):
            out.print("[bold red]error:[/] --gateway must be an http:// or https:// URL")
            raise typer.Exit(2)
        out.print(f"Loopgate Console on http://{host}:{port}/console, acting on {gateway}")
        uvicorn.run(
            create_console_app(settings, gateway),
            host=host,
            port=port,
            log_level=log_level,
            server_header=False,
        )
