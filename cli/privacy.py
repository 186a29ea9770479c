"""`loopgate privacy forget`: delete a unit's content key, so its event content reads "[erased]"."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # imported where used: registering commands stays cheap (`--help`)
    from feedback.privacy.config import PrivacyConfig
    from feedback.privacy.keys import KeyReader, UnitKey


class _NoKeyDir:
    """A file store that is not there: fails when a sealed event needs a key, not before."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def unit_key(self, unit_hash: str) -> UnitKey | None:
        """Always refuses: reading with the wrong store would show every event as erased."""
        from feedback.privacy.keys import KeyStoreError

        raise KeyStoreError(
            f"no key directory at {self.directory}: sealed content needs the keys the gateway "
            "wrote (pass --keys DIR or redis://URL, or set events.privacy in the config)"
        )


def key_reader_for(keys: str | None, spool: Path | None = None) -> KeyReader:
    """The key store to open sealed events with: `--keys` (a directory or a redis:// URL),
    else the settings' events.privacy (LOOPGATE_* env applies), a file store beside `spool`."""
    from feedback.privacy.keys import KeyStoreError
    from feedback.privacy.stores import key_reader
    from gateway.settings import load_settings

    events = load_settings().events
    config, spool_dir = events.privacy, spool or events.spool.dir
    if keys is not None and keys.startswith(("redis://", "rediss://", "unix://")):
        config = config.model_copy(update={"store": "redis", "redis_url": keys})
    elif keys is not None:
        config = config.model_copy(update={"store": "file", "dir": Path(keys)})
    try:
        return key_reader(config, spool_dir)
    except KeyStoreError:
        return _NoKeyDir(Path(keys) if keys else spool_dir.parent / "keys")


KEYS_HELP = "Key store of sealed content: a directory or redis://URL (default: the config's)"


def register(app: typer.Typer) -> None:
    """Add the `privacy` command group."""
    privacy = typer.Typer(help="Erasure: forget a unit (user) by deleting its content key.")
    app.add_typer(privacy, name="privacy")

    @privacy.command()
    def forget(
        unit: Annotated[
            str | None, typer.Option("--unit", help="The unit id (the request's `user`)")
        ] = None,
        unit_hash: Annotated[
            str | None, typer.Option("--unit-hash", help="Its unit hash, as events show it")
        ] = None,
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="Gateway config (its ids, keys)")
        ] = None,
    ) -> None:
        """Delete the unit's key: its content in every spool, topic and event log is unreadable."""
        from feedback.privacy.config import key_dir
        from feedback.privacy.file_store import check_unit_hash
        from feedback.privacy.keys import KeyStoreError
        from feedback.privacy.stores import forget_unit
        from gateway.ids import ResponseIdSigner
        from gateway.settings import ConfigError, load_settings

        try:
            settings = load_settings(config)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if (unit is None) == (unit_hash is None):
            typer.echo("error: give exactly one of --unit ID or --unit-hash HASH", err=True)
            raise typer.Exit(2)
        if unit is not None:
            ids = settings.ids
            if not ids.keys and ids.unit_key is None:
                typer.echo(
                    "error: ids.unit_key (or ids.keys) is not configured, so unit hashes change "
                    "with every gateway run and --unit cannot be hashed; set LOOPGATE_IDS__UNIT_KEY"
                    ", or pass --unit-hash from the unit's events",
                    err=True,
                )
                raise typer.Exit(2)
            signing = [key.get_secret_value().encode() for key in ids.keys] or [b"unused"]
            unit_key = ids.unit_key.get_secret_value().encode() if ids.unit_key else None
            unit_hash = ResponseIdSigner(signing, unit_key).unit_hash(unit)
        assert unit_hash is not None
        privacy: PrivacyConfig = settings.events.privacy
        directory = key_dir(privacy, settings.events.spool.dir)
        where = (
            f"{privacy.redis_url} ({privacy.namespace})"
            if privacy.store == "redis"
            else (str(directory))
        )
        try:
            check_unit_hash(unit_hash)
            if privacy.store == "file" and not directory.is_dir():
                raise KeyStoreError(f"no key directory at {directory}: give the gateway's --config")
            existed = forget_unit(privacy, settings.events.spool.dir, unit_hash)
        except (ValueError, KeyStoreError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if existed:
            typer.echo(f"forgot unit {unit_hash}: its sealed content can no longer be read")
            typer.echo(f"  key deleted from {where}")
        else:
            typer.echo(f"unit {unit_hash} has no key: already forgotten, or nothing sealed")
            typer.echo(f"  looked in {where}")
