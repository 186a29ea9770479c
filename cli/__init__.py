"""`loopgate` command line: each subcommand lives in its own module and registers here.

Command modules import only typer at their top (the rest inside the commands), so that
`loopgate --help`, `--version` and shell completion start in a fraction of a second.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(name="loopgate", no_args_is_help=True)


def version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("loopgate")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"loopgate {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """OpenAI-compatible serving gateway with A/B routing and feedback capture.

    Admin commands: --url/LOOPGATE_URL, --token/LOOPGATE_ADMIN_TOKEN; each names its role.
    """


def _register() -> None:
    if app.registered_groups:  # once per process (tests call it again)
        return
    from cli import (
        console,
        datasets,
        demo,
        drift,
        evaluators,
        events,
        experiments,
        flags,
        keys,
        privacy,
        rollout,
        serve,
        sim,
    )

    for module in (
        serve,
        sim,
        flags,
        experiments,
        rollout,
        drift,
        events,
        evaluators,
        datasets,
        demo,
        keys,
        console,
        privacy,
    ):
        module.register(app)


def main() -> None:
    """Console script entry point."""
    _register()
    app(prog_name="loopgate")
