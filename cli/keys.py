"""`loopgate keys`: make API keys and admin tokens, and the hashes the config stores."""

from __future__ import annotations

import os
import secrets
import sys
from typing import Annotated

import typer

keys_app = typer.Typer(help="API keys and admin tokens: only their hashes go in the config.")

PepperEnv = Annotated[
    str | None,
    typer.Option(
        "--pepper-env",
        help="Environment variable holding auth.pepper (HMAC hashes); unset: plain SHA-256.",
    ),
]


def _pepper(env: str | None) -> bytes | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        typer.echo(f"loopgate keys: environment variable {env} is not set", err=True)
        raise typer.Exit(2)
    return value.encode()


@keys_app.command("hash")
def hash_command(pepper_env: PepperEnv = None) -> None:
    """Read a key on stdin (never on the command line, where ps shows it); print its hash."""
    from gateway.auth import hash_secret

    secret = sys.stdin.readline().strip()
    if not secret:
        typer.echo("loopgate keys hash: give the key on stdin", err=True)
        raise typer.Exit(2)
    pepper = _pepper(pepper_env)
    prefix = "hmac-sha256:" if pepper else "sha256:"
    typer.echo(prefix + hash_secret(secret, pepper))


@keys_app.command("new")
def new_command(
    app_id: Annotated[str, typer.Option(help="The app the key belongs to.")] = "my-app",
    admin_role: Annotated[
        str | None, typer.Option(help="Make an admin token with this role instead.")
    ] = None,
    pepper_env: PepperEnv = None,
) -> None:
    """Make a random key; print it once (stderr) and its config entry (stdout)."""
    from gateway.auth import ROLE_RANK, hash_secret

    if admin_role is not None and admin_role not in ROLE_RANK:
        typer.echo(f"loopgate keys new: role must be one of {', '.join(ROLE_RANK)}", err=True)
        raise typer.Exit(2)
    secret = ("lga-" if admin_role else "lgk-") + secrets.token_urlsafe(32)
    pepper = _pepper(pepper_env)
    digest = ("hmac-sha256:" if pepper else "sha256:") + hash_secret(secret, pepper)
    typer.echo(f"key (shown once, store it now): {secret}", err=True)
    if admin_role:
        typer.echo(f"- {{hash: '{digest}', role: {admin_role}, name: {app_id}}}")
    else:
        typer.echo(f"- {{hash: '{digest}', app_id: {app_id}}}")


def register(app: typer.Typer) -> None:
    """Add the keys command group."""
    app.add_typer(keys_app, name="keys")
