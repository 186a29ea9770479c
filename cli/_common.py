"""What every command shares: the one error type, the --url/--token/--json options, output.

Only typer is imported at module level: `loopgate --help` loads every command module, and
each pays for rich, pydantic or the gateway only when it runs.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_URL = "http://127.0.0.1:8080"

# The same three options, in the same place (after the subcommand), on every admin command.
Url = Annotated[
    str, typer.Option("--url", envvar="LOOPGATE_URL", help="Gateway base URL.")
]  # fmt: skip
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="LOOPGATE_ADMIN_TOKEN", help="Admin token.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


class CliError(Exception):
    """A failure reported in one line on stderr; exit code 1 (2 for a refusal or bad input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def console() -> Console:
    """Standard output, for what a command prints."""
    from rich.console import Console

    return Console()


def err_console() -> Console:
    """Standard error, for errors, warnings and progress."""
    from rich.console import Console

    return Console(stderr=True)


def fail(exc: CliError) -> typer.Exit:
    """Print `error: ...` on stderr; the Exit to raise."""
    from rich.markup import escape

    err_console().print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(exc.code)


@contextmanager
def reported() -> Iterator[None]:
    """Run a command body: a CliError becomes one line on stderr and its exit code."""
    try:
        yield
    except CliError as exc:
        raise fail(exc) from exc


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colours, no wrapping: for pipes and jq)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime, option: str = "--since") -> datetime:
    """A time ago (`90s`, `30m`, `24h`, `7d`, `2w`) or an ISO date or time (UTC if bare)."""
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a time ago (30m, 24h, 7d, 2w) nor a date or time "
            "(2025-01-31, 2025-01-31T08:00, 2025-01-31T08:00+02:00)",
            param_hint=option,
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def short_id(value: str, keep: int = 10) -> str:
    """A response id by the part that tells it apart: every `lg1.` id starts the same way."""
    if value.startswith("lg1.") and value.count(".") == 2:
        mac = value.rsplit(".", 1)[1]
        return "lg1…" + mac[-keep:]
    return value if len(value) <= 2 * keep + 4 else value[:keep] + "…" + value[-keep:]
