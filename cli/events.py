"""`loopgate events tail|replay|stats`: read events from Kafka or a spool; re-send a spool."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli._common import CliError, console, err_console, fail, parse_time, short_id

if TYPE_CHECKING:
    from feedback.config import KafkaConfig, SpoolConfig
    from feedback.sinks.spool_reader import FolderStats

KAFKA = typer.Option(
    "--kafka", help="Kafka bootstrap HOST:PORT (repeat or comma-separate)", show_default=False
)
SPOOL = typer.Option("--spool", help="Spool directory (the root or one gateway's folder)")
CONFIG = typer.Option("--config", "-c", help="Gateway config: its events.kafka or events.spool")
TOPIC = typer.Option("--topic", help="Only this topic (repeatable)")
TYPE = typer.Option("--type", help="Only this event type: completion, feedback, flag_change...")
SINCE = typer.Option(
    "--since", help="Only events from then on: a time ago (30m, 24h, 7d) or a date or time"
)
_POLL_S = 0.2


@dataclass(frozen=True)
class Source:
    """Where events are read from: Kafka bootstrap servers, or a spool directory."""

    kafka: list[str] | None
    spool: Path | None
    spool_config: SpoolConfig | None = field(default=None)


def _servers(values: list[str] | None) -> list[str] | None:
    servers = [s.strip() for v in values or [] for s in v.split(",") if s.strip()]
    return servers or None


def _events_config(config: Path | None) -> Any:
    from gateway.settings import ConfigError, load_settings

    try:
        return load_settings(config).events
    except ConfigError as exc:
        raise CliError(str(exc), code=2) from exc


def event_source(kafka: list[str] | None, spool: Path | None, config: Path | None) -> Source:
    """Explicit --kafka or --spool win; otherwise the config's Kafka, else its spool."""
    events = _events_config(config)
    servers = _servers(kafka)
    if servers is not None or spool is not None:
        return Source(servers, spool, events.spool)
    if events.kafka is not None:
        return Source(list(events.kafka.bootstrap_servers), None, events.spool)
    return Source(None, events.spool.dir, events.spool)


@contextlib.contextmanager
def spool_errors() -> Any:
    from feedback.sinks.spool_reader import SpoolBusy, SpoolError

    try:
        yield
    except SpoolBusy as exc:
        raise CliError(str(exc), code=2) from exc
    except SpoolError as exc:
        raise CliError(str(exc)) from exc


# --- rendering ---------------------------------------------------------------------------


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _pretty(event: dict[str, Any]) -> str:
    from rich.markup import escape

    body = event.get("body") or {}
    kind = str(event.get("type", "?"))
    when = str(event.get("time", ""))[:23].replace("T", " ")
    route = f"{body.get('flag') or '-'}/{body.get('variant') or '-'}"
    if kind == "completion":
        usage = body.get("usage") or {}
        tokens = f"{usage.get('prompt_tokens', 0)}+{usage.get('completion_tokens', 0)} tok"
        text = _short((body.get("response") or {}).get("text"))
        status = body.get("status", "?")
        colour = "green" if status == "ok" else "red"
        detail = (
            f"[{colour}]{status}[/] {tokens} {float(body.get('latency_ms', 0)):.0f} ms"
            f"{' stream' if body.get('stream') else ''}  {escape(text)}"
        )
    elif kind == "feedback":
        value = body.get("value")
        extra = body.get("edited_text") or body.get("comment") or body.get("category")
        detail = (
            f"[bold]{escape(str(body.get('kind')))}[/]"
            f"{'' if value is None else f' {value:g}'}  {escape(_short(extra))}"
        )
        route += f" app={escape(str(body.get('app', '')))}"
    elif kind == "evaluation":
        detail = (
            f"[bold]{escape(str(body.get('evaluator')))}[/] {float(body.get('score', 0)):g}"
            f"  {escape(_short(body.get('reason')))}"
        )
    else:
        route = escape(str(body.get("what", "-")))
        detail = escape(
            f"{body.get('action', '?')} by {body.get('who', '?')} -> v{body.get('version')}"
        )
    key = short_id(str(body.get("response_id") or ""))
    return f"[dim]{when}[/] [cyan]{kind:<11}[/] {escape(route)} [dim]{escape(key)}[/] {detail}"


def _event_time(event: dict[str, Any]) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(event.get("time")))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filter:
    """Which events to show: by topic, by type, and from when."""

    topics: set[str] | None = None
    types: set[str] | None = None
    since: datetime | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        """True when the event passes every filter given."""
        from feedback.schema import route_of

        if self.types and event.get("type") not in self.types:
            return False
        if self.since is not None:
            when = _event_time(event)
            if when is None or when < self.since:
                return False
        return not self.topics or route_of(event)[0] in self.topics


def parse_event(line: bytes) -> dict[str, Any] | None:
    import orjson

    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _show(raw: bytes, event: dict[str, Any], as_json: bool, keys: Any = None) -> None:
    import orjson

    from feedback.privacy import SealError, is_sealed, open_event

    if keys is not None and is_sealed(event):  # content shown opened, or "[erased]"
        with contextlib.suppress(SealError):  # tampered: shown sealed, as it is
            event = open_event(event, keys)
            raw = orjson.dumps(event)
    if as_json:
        print(raw.decode(), flush=True)
    else:
        console().print(_pretty(event), highlight=False, soft_wrap=True)


def _topics_for(topics: list[str] | None, types: list[str] | None) -> list[str]:
    from feedback.schema import (
        AUDIT_TOPIC,
        COMPLETIONS_TOPIC,
        EVALUATIONS_TOPIC,
        FEEDBACK_TOPIC,
        TOPICS,
    )

    if topics:
        return list(dict.fromkeys(topics))
    if not types:
        return list(TOPICS)
    by_type = {"completion": COMPLETIONS_TOPIC, "feedback": FEEDBACK_TOPIC,
               "evaluation": EVALUATIONS_TOPIC}  # fmt: skip
    wanted = {by_type.get(t, AUDIT_TOPIC) for t in types}
    return [t for t in TOPICS if t in wanted]


# --- Kafka -------------------------------------------------------------------------------


@contextlib.contextmanager
def kafka_errors() -> Any:
    from feedback.sinks.kafka_reader import KafkaReadError

    try:
        yield
    except KafkaReadError as exc:
        raise CliError(str(exc)) from exc


def _tail_kafka(
    servers: list[str], topics: list[str], wanted: Filter, last: int | None, follow: bool,
    as_json: bool, keys: Any = None,
) -> None:  # fmt: skip
    from feedback.sinks.kafka_reader import TopicReader

    with kafka_errors(), TopicReader(servers, topics, wait=follow) as reader:
        shown = [(raw, ev) for raw in reader.backlog(last)
                 if (ev := parse_event(raw)) is not None and wanted.matches(ev)]  # fmt: skip
        for raw, event in _last(shown, last):
            _show(raw, event, as_json, keys)
        while follow:
            for raw in reader.poll():
                new = parse_event(raw)
                if new is not None and wanted.matches(new):
                    _show(raw, new, as_json, keys)


def _last(items: list[Any], last: int | None) -> list[Any]:
    if last is None:
        return items
    return items[-last:] if last > 0 else []


# --- the spool: tail, stats, replay ------------------------------------------------------


def _tail_spool(
    root: Path, wanted: Filter, last: int | None, follow: bool, as_json: bool, keys: Any = None
) -> None:
    from feedback.sinks.spool import SpoolPosition
    from feedback.sinks.spool_reader import SpoolReader, spool_folders

    readers = [SpoolReader(folder) for folder in spool_folders(root)]
    backlog: list[tuple[str, bytes, dict[str, Any]]] = []
    for reader in readers:
        for raw in reader.read():
            event = parse_event(raw)
            if event is not None and wanted.matches(event):
                backlog.append((str(event.get("time", "")), raw, event))
    # Merged by time across folders; stable, so one folder's order holds for equal times.
    backlog.sort(key=lambda item: item[0])
    for _, raw, event in _last(backlog, last):
        _show(raw, event, as_json, keys)
    while follow:
        time.sleep(_POLL_S)
        known = {reader.folder for reader in readers}
        readers += [SpoolReader(f, SpoolPosition(0, 0)) for f in spool_folders(root)
                    if f not in known]  # fmt: skip
        for reader in readers:
            for raw in reader.read():
                event = parse_event(raw)
                if event is not None and wanted.matches(event):
                    _show(raw, event, as_json, keys)


def _stats_table(rows: list[FolderStats]) -> None:
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "-"

    out = console()
    for r in rows:  # one narrow table per folder: readable in an 80-column terminal
        table = Table(title=escape(r.folder), show_header=False)
        table.add_column(style="bold")
        table.add_column()
        corrupt = f" ({r.corrupt} unreadable)" if r.corrupt else ""
        for name, value in (
            ("state", "live (locked by a gateway)" if r.live else "stopped"),
            ("segments", str(r.segments)),
            ("bytes", f"{r.bytes:,}"),
            ("pending bytes", f"{r.pending_bytes:,}"),
            ("pending events", f"{r.pending_events}{corrupt}"),
            ("by type", counts(r.by_type)),
            ("by flag/variant", counts(r.by_variant)),
            ("feedback kinds", counts(r.by_kind)),
        ):
            table.add_row(name, escape(value))
        out.print(table)


def _replay(folders: list[Path], kafka: KafkaConfig, spool: SpoolConfig) -> int:
    """Replay each folder with a progress bar (bytes; events counted alongside); the total."""
    import asyncio

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from feedback.sinks.spool_reader import folder_stats, replay_folder

    total = 0
    out = console()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TextColumn("{task.fields[events]} events"))  # fmt: skip
    with Progress(*columns, console=err_console(), transient=True) as progress:
        for folder in folders:
            pending = folder_stats(folder).pending_bytes
            task = progress.add_task(folder.name, total=pending or None, events=0)
            sent_events = 0

            def advance(events: int, size: int, task: Any = task) -> None:
                nonlocal sent_events
                sent_events += events
                progress.update(task, advance=size, events=sent_events)

            sent, corrupt, aside = asyncio.run(replay_folder(folder, kafka, spool, advance))
            progress.update(task, completed=pending)
            total += sent
            note = f" ({corrupt} unreadable lines skipped)" if corrupt else ""
            if aside:
                note += f" ({aside} Kafka can never take, set aside in {folder}/dead-letter)"
            out.print(f"{folder}: replayed {sent} events{note}")
    return total


def register(app: typer.Typer) -> None:
    """Add the events command group."""
    events = typer.Typer(
        help="Read events from Kafka or a spool; replay a stopped spool.", no_args_is_help=True
    )
    app.add_typer(events, name="events")

    @events.command()
    def tail(
        kafka: Annotated[list[str] | None, KAFKA] = None,
        spool: Annotated[Path | None, SPOOL] = None,
        config: Annotated[Path | None, CONFIG] = None,
        topic: Annotated[list[str] | None, TOPIC] = None,
        type_: Annotated[list[str] | None, TYPE] = None,
        since: Annotated[str | None, SINCE] = None,
        last: Annotated[
            int | None,
            typer.Option("--last", "-n", help="Events shown first [default: 10, all with --since]"),
        ] = None,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Raw JSON lines")] = False,
        keys: Annotated[
            str | None, typer.Option("--keys", help="Key store (dir, redis://)")
        ] = None,
    ) -> None:
        """The last events (pending ones, for a spool), then new ones with --follow."""
        from cli.privacy import key_reader_for
        from feedback.privacy import KeyStoreError

        start = parse_time(since, datetime.now(UTC)) if since is not None else None
        count = last if last is not None else (None if start is not None else 10)
        wanted = Filter(set(topic) if topic else None, set(type_) if type_ else None, start)
        try:
            source = event_source(kafka, spool, config)
            reader = key_reader_for(keys, source.spool)
            with contextlib.suppress(KeyboardInterrupt), spool_errors():
                if source.kafka is not None:
                    topics = _topics_for(topic, type_)
                    _tail_kafka(source.kafka, topics, wanted, count, follow, as_json, reader)
                elif source.spool is not None:
                    _tail_spool(source.spool, wanted, count, follow, as_json, reader)
        except KeyStoreError as exc:
            raise fail(CliError(str(exc))) from exc
        except CliError as exc:
            raise fail(exc) from exc

    @events.command()
    def stats(
        kafka: Annotated[list[str] | None, KAFKA] = None,
        spool: Annotated[Path | None, SPOOL] = None,
        config: Annotated[Path | None, CONFIG] = None,
        topic: Annotated[list[str] | None, TOPIC] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """Spool: segments, bytes, pending events by type and variant. Kafka: topic offsets."""
        from rich.table import Table

        from feedback.sinks.spool_reader import spool_stats

        try:
            source = event_source(kafka, spool, config)
            if source.kafka is not None:
                from feedback.sinks.kafka_reader import topic_stats

                with kafka_errors():
                    rows = topic_stats(source.kafka, topic)
                if as_json:
                    print(json.dumps({"kafka": rows}, indent=2))
                    return
                table = Table(title=f"Kafka {', '.join(source.kafka)}")
                for column in ("topic", "partitions", "records", "end offsets"):
                    table.add_column(column)
                for row in rows:
                    ends = " ".join(f"{p}:{o}" for p, o in row["end_offsets"].items())
                    table.add_row(row["topic"], str(row["partitions"]), str(row["records"]), ends)
                console().print(table)
            elif source.spool is not None:
                with spool_errors():
                    folders = spool_stats(source.spool)
                if as_json:
                    payload = [
                        {**vars(f), "by_type": dict(f.by_type), "by_variant": dict(f.by_variant),
                         "by_kind": dict(f.by_kind)} for f in folders
                    ]  # fmt: skip
                    print(json.dumps({"spool": payload}, indent=2))
                else:
                    _stats_table(folders)
        except CliError as exc:
            raise fail(exc) from exc

    @events.command()
    def replay(
        kafka: Annotated[list[str] | None, KAFKA] = None,
        spool: Annotated[Path | None, SPOOL] = None,
        config: Annotated[Path | None, CONFIG] = None,
    ) -> None:
        """Re-send a stopped gateway's pending spool to Kafka, in order (at least once)."""
        from feedback.config import KafkaConfig
        from feedback.sinks.spool_reader import is_locked, spool_folders

        try:
            events_config = _events_config(config)
            servers = _servers(kafka)
            if servers is not None:
                kafka_config = KafkaConfig(bootstrap_servers=servers)
            elif events_config.kafka is not None:
                kafka_config = events_config.kafka
            else:
                raise CliError("no Kafka to replay to: give --kafka or a config with events.kafka")
            root = spool or events_config.spool.dir
            with spool_errors():
                folders = spool_folders(root)
                live = [str(f) for f in folders if is_locked(f)]
                if live:  # refuse before touching any folder, not half-way through
                    raise CliError(
                        f"spool {', '.join(live)} is locked by a running gateway: stop it first "
                        "(a running gateway replays its own spool when Kafka is back)",
                        code=2,
                    )
                total = _replay(folders, kafka_config, events_config.spool)
            servers_text = ", ".join(kafka_config.bootstrap_servers)
            console().print(f"replayed {total} events to {servers_text}")
        except CliError as exc:
            raise fail(exc) from exc
