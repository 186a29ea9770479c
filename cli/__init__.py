"""`loopgate` command line: each subcommand lives in its own module and registers here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="loopgate",
    help="OpenAI-compatible serving gateway with A/B routing and feedback capture.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """OpenAI-compatible serving gateway with A/B routing and feedback capture."""


def _register() -> None:
    # Imported here, not at module top, so `import cli` stays cheap.
    from cli import datasets, flags, serve, sim

    serve.register(app)
    sim.register(app)
    flags.register(app)
    datasets.register(app)
    __import__("cli.experiments", fromlist=["register"]).register(app)
    __import__("cli.rollout", fromlist=["register"]).register(app)
    __import__("cli.demo", fromlist=["register"]).register(app)
    __import__("cli.keys", fromlist=["register"]).register(app)
    __import__("cli.drift", fromlist=["register"]).register(app)
    __import__("cli.events", fromlist=["register"]).register(app)
    __import__("cli.privacy", fromlist=["register"]).register(app)


def main() -> None:
    """Console script entry point."""
    _register()
    app()
