"""`loopgate serve`: the gateway under uvicorn."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the serve command."""

    @app.command()
    def serve() -> None:
        """Run the gateway (filled in by the gateway core)."""
        raise typer.Exit(1)
