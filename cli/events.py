"""`loopgate events tail|replay|stats`: read events from Kafka or a spool; re-send a spool."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from feedback.config import KafkaConfig, SpoolConfig
from feedback.schema import AUDIT_TOPIC, COMPLETIONS_TOPIC, FEEDBACK_TOPIC, TOPICS, route_of
from feedback.sinks.spool import CURSOR_FILE, LOCK_FILE, SEGMENT_SUFFIX, Spool, SpoolPosition

console = Console()
errors = Console(stderr=True)

KAFKA = typer.Option(
    "--kafka", help="Kafka bootstrap HOST:PORT (repeat or comma-separate)", show_default=False
)
SPOOL = typer.Option("--spool", help="Spool directory (the root or one gateway's folder)")
CONFIG = typer.Option("--config", "-c", help="Gateway config: its events.kafka or events.spool")
TOPIC = typer.Option("--topic", help="Only this topic (repeatable)")
TYPE = typer.Option("--type", help="Only this event type: completion, feedback, flag_change...")
_POLL_S = 0.2


class CliError(Exception):
    """A failure reported in one line; exit code 1 (2 for a refusal)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Source:
    """Where events are read from: Kafka bootstrap servers, or a spool directory."""

    kafka: list[str] | None
    spool: Path | None
    spool_config: SpoolConfig = field(default_factory=SpoolConfig)


def _servers(values: list[str] | None) -> list[str] | None:
    servers = [s.strip() for v in values or [] for s in v.split(",") if s.strip()]
    return servers or None


def _source(kafka: list[str] | None, spool: Path | None, config: Path | None) -> Source:
    """Explicit --kafka or --spool win; otherwise the config's Kafka, else its spool."""
    from gateway.settings import ConfigError, load_settings

    try:
        events = load_settings(config).events
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    servers = _servers(kafka)
    if servers is not None or spool is not None:
        return Source(servers, spool, events.spool)
    if events.kafka is not None:
        return Source(list(events.kafka.bootstrap_servers), None, events.spool)
    return Source(None, events.spool.dir, events.spool)


# --- the spool, read without its lock (a live gateway may be writing it) -------------------


def _is_folder(path: Path) -> bool:
    return (path / LOCK_FILE).exists() or any(path.glob(f"*{SEGMENT_SUFFIX}"))


def spool_folders(path: Path) -> list[Path]:
    """The per-process spool folders at `path`: itself, or its subfolders (`name`, `name.1`)."""
    if not path.is_dir():
        raise CliError(f"no spool directory at {path}")
    if _is_folder(path):
        return [path]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and _is_folder(p))
    if not folders:
        raise CliError(f"no spool folders under {path}")
    return folders


def is_locked(folder: Path) -> bool:
    """True when a live process (a gateway) holds the folder's lock."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return False


def _segments(folder: Path) -> dict[int, Path]:
    return {
        int(p.stem): p for p in folder.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit()
    }  # fmt: skip


def _cursor(folder: Path, segments: dict[int, Path]) -> SpoolPosition:
    first = min(segments, default=1)
    try:
        raw = orjson.loads((folder / CURSOR_FILE).read_bytes())
        position = SpoolPosition(int(raw["segment"]), int(raw["offset"]))
    except (OSError, ValueError, KeyError, TypeError):
        return SpoolPosition(first, 0)
    return position if position.segment in segments else SpoolPosition(first, 0)


class SpoolReader:
    """Complete lines of one folder from a position on; follows rotation and replay."""

    def __init__(self, folder: Path, position: SpoolPosition | None = None) -> None:
        self.folder = folder
        self.position = position or _cursor(folder, _segments(folder))

    def read(self) -> Iterator[bytes]:
        """Every complete line written after the position; moves the position past them."""
        while True:
            segments = _segments(self.folder)
            if not segments:
                return
            segment, offset = self.position.segment, self.position.offset
            if segment not in segments:
                # Replayed and deleted behind us, or not created yet.
                later = [n for n in segments if n > segment]
                if not later:
                    return
                segment, offset = min(later), 0
            try:
                with segments[segment].open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                continue  # deleted between the listing and the open: list again
            end = data.rfind(b"\n") + 1  # a writer may be mid-line: only whole lines
            for line in data[:end].split(b"\n")[:-1]:
                if line.strip():
                    yield line
            self.position = SpoolPosition(segment, offset + end)
            if end < len(data) or not any(n > segment for n in segments):
                return
            self.position = SpoolPosition(min(n for n in segments if n > segment), 0)


# --- rendering ---------------------------------------------------------------------------


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _pretty(event: dict[str, Any]) -> str:
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
    else:
        route = escape(str(body.get("what", "-")))
        detail = escape(
            f"{body.get('action', '?')} by {body.get('who', '?')} -> v{body.get('version')}"
        )
    key = str(body.get("response_id") or "")
    key = key if len(key) <= 24 else key[:12] + "…" + key[-8:]
    return f"[dim]{when}[/] [cyan]{kind:<11}[/] {escape(route)} [dim]{escape(key)}[/] {detail}"


def _matches(event: dict[str, Any], topics: set[str] | None, types: set[str] | None) -> bool:
    if types and event.get("type") not in types:
        return False
    return not topics or route_of(event)[0] in topics


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _show(raw: bytes, event: dict[str, Any], as_json: bool, keys: Any = None) -> None:
    from feedback.privacy import SealError, is_sealed, open_event

    if keys is not None and is_sealed(event):  # content shown opened, or "[erased]"
        with contextlib.suppress(SealError):  # tampered: shown sealed, as it is
            event = open_event(event, keys)
            raw = orjson.dumps(event)
    if as_json:
        print(raw.decode(), flush=True)
    else:
        console.print(_pretty(event), highlight=False, soft_wrap=True)


def _topics_for(topics: list[str] | None, types: list[str] | None) -> list[str]:
    if topics:
        return list(dict.fromkeys(topics))
    if not types:
        return list(TOPICS)
    wanted = {COMPLETIONS_TOPIC if t == "completion" else FEEDBACK_TOPIC if t == "feedback"
              else AUDIT_TOPIC for t in types}  # fmt: skip
    return [t for t in TOPICS if t in wanted]


# --- Kafka -------------------------------------------------------------------------------


def _consumer(servers: list[str]) -> Any:
    from feedback.sinks.kafka import load_kafka_client

    load_kafka_client()
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        # No group: assigned partitions, no join (and no group left behind by a quick exit).
        return KafkaConsumer(
            bootstrap_servers=servers,
            group_id=None,
            enable_auto_commit=False,
            client_id="loopgate-events-cli",
            request_timeout_ms=10_000,
        )
    except KafkaError as exc:
        raise CliError(f"cannot reach Kafka {servers}: {exc}") from exc


def _partitions(consumer: Any, topics: list[str]) -> list[Any]:
    from kafka import TopicPartition

    out = []
    for topic in topics:
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            out.append(TopicPartition(topic, partition))
    return out


def end_offsets(consumer: Any, parts: list[Any]) -> dict[Any, int]:
    """One past the last record of each partition, from a fetch's high watermark.

    tansu answers ListOffsets(latest) with the last *batch's* base offset plus one, short of
    the end when that batch holds several records; a fetch's high watermark is exact.
    """
    listed: dict[Any, int] = consumer.end_offsets(parts)
    begins: dict[Any, int] = consumer.beginning_offsets(parts)
    consumer.assign(parts)
    for part in parts:
        consumer.seek(part, max(begins[part], listed[part] - 1))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        consumer.highwater(p) is None for p in parts if listed[p] > begins[p]
    ):
        consumer.poll(timeout_ms=200)
    return {p: max(listed[p], consumer.highwater(p) or 0) for p in parts}


def _tail_kafka(
    servers: list[str], topics: list[str], types: set[str] | None, last: int, follow: bool,
    as_json: bool, keys: Any = None,
) -> None:  # fmt: skip
    consumer = _consumer(servers)
    try:
        parts = _partitions(consumer, topics)
        if not parts and not follow:
            raise CliError(f"none of {', '.join(topics)} exists on {', '.join(servers)}")
        while not parts:  # --follow before the gateway created its topics
            time.sleep(1.0)
            parts = _partitions(consumer, topics)
        ends = end_offsets(consumer, parts)
        begins = consumer.beginning_offsets(parts)
        for part in parts:
            consumer.seek(part, max(begins[part], ends[part] - last))
        backlog: list[tuple[int, str, int, bytes]] = []
        idle = 0
        # Up to the end offsets seen at start; a few empty polls end it (offset gaps).
        while idle < 6 and any(consumer.position(p) < ends[p] for p in parts):
            polled = consumer.poll(timeout_ms=500).values()
            idle = 0 if polled else idle + 1
            for batch in polled:
                backlog += [(r.timestamp, r.topic, r.offset, r.value) for r in batch]
        shown = [(raw, ev) for *_, raw in sorted(backlog)
                 if (ev := _parse(raw)) is not None and _matches(ev, None, types)]  # fmt: skip
        for raw, event in shown[-last:] if last else []:
            _show(raw, event, as_json, keys)
        while follow:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    new = _parse(record.value)
                    if new is not None and _matches(new, None, types):
                        _show(record.value, new, as_json, keys)
    finally:
        consumer.close()


def kafka_stats(servers: list[str], topics: list[str] | None) -> list[dict[str, Any]]:
    """Partitions, first and end offsets and record counts of each Loopgate topic."""
    consumer = _consumer(servers)
    try:
        names = topics or sorted(t for t in consumer.topics() if t.startswith("loopgate."))
        rows = []
        for topic in names:
            parts = _partitions(consumer, [topic])
            begins = consumer.beginning_offsets(parts) if parts else {}
            ends = end_offsets(consumer, parts) if parts else {}
            rows.append({
                "topic": topic,
                "partitions": len(parts),
                "end_offsets": {str(p.partition): ends[p] for p in parts},
                "records": sum(ends[p] - begins[p] for p in parts),
            })  # fmt: skip
        return rows
    finally:
        consumer.close()


# --- the spool: tail, stats, replay ------------------------------------------------------


def _tail_spool(
    root: Path, topics: set[str] | None, types: set[str] | None, last: int, follow: bool,
    as_json: bool, keys: Any = None,
) -> None:  # fmt: skip
    readers = [SpoolReader(folder) for folder in spool_folders(root)]
    backlog: list[tuple[str, bytes, dict[str, Any]]] = []
    for reader in readers:
        for raw in reader.read():
            event = _parse(raw)
            if event is not None and _matches(event, topics, types):
                backlog.append((str(event.get("time", "")), raw, event))
    # Merged by time across folders; stable, so one folder's order holds for equal times.
    backlog.sort(key=lambda item: item[0])
    for _, raw, event in backlog[-last:] if last else []:
        _show(raw, event, as_json, keys)
    while follow:
        time.sleep(_POLL_S)
        known = {reader.folder for reader in readers}
        readers += [SpoolReader(f, SpoolPosition(0, 0)) for f in spool_folders(root)
                    if f not in known]  # fmt: skip
        for reader in readers:
            for raw in reader.read():
                event = _parse(raw)
                if event is not None and _matches(event, topics, types):
                    _show(raw, event, as_json, keys)


@dataclass
class FolderStats:
    """What one spool folder holds."""

    folder: str
    live: bool
    segments: int
    bytes: int
    pending_bytes: int
    pending_events: int = 0
    corrupt: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_variant: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)


def spool_stats(root: Path) -> list[FolderStats]:
    """Segments, bytes, pending bytes and pending events by type, flag/variant and kind."""
    out = []
    for folder in spool_folders(root):
        segments = _segments(folder)
        sizes = {n: p.stat().st_size for n, p in segments.items()}
        cursor = _cursor(folder, segments)
        pending = sum(s for n, s in sizes.items() if n >= cursor.segment) - cursor.offset
        stats = FolderStats(
            str(folder), is_locked(folder), len(sizes), sum(sizes.values()), max(pending, 0)
        )
        for raw in SpoolReader(folder, cursor).read():
            event = _parse(raw)
            if event is None:
                stats.corrupt += 1
                continue
            body = event.get("body") or {}
            stats.pending_events += 1
            stats.by_type[str(event.get("type"))] += 1
            if event.get("type") in ("completion", "feedback"):
                stats.by_variant[f"{body.get('flag') or '-'}/{body.get('variant') or '-'}"] += 1
            if event.get("type") == "feedback":
                stats.by_kind[str(body.get("kind"))] += 1
        out.append(stats)
    return out


def _lock(folder: Path) -> int:
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CliError(
            f"spool {folder} is locked by a running gateway: stop it first "
            "(a running gateway replays its own spool when Kafka is back)",
            code=2,
        ) from None
    return fd


async def replay_folder(folder: Path, kafka: KafkaConfig, spool: SpoolConfig) -> tuple[int, int]:
    """Send the folder's pending events to Kafka in order; returns (replayed, corrupt)."""
    from feedback.sinks.base import Record, SinkError
    from feedback.sinks.kafka import KafkaSink
    from feedback.sinks.spool import record_from_line

    fd = _lock(folder)  # before anything is read: a live gateway owns the cursor
    store = Spool(folder, spool.segment_bytes, spool.max_bytes, fd)
    sink = KafkaSink(kafka)
    replayed = corrupt = 0
    try:
        while True:
            lines, position = await asyncio.to_thread(store.read, 500)
            if not lines:
                return replayed, corrupt
            records: list[Record] = []
            for line in lines:
                try:
                    records.append(record_from_line(line))
                except ValueError:
                    corrupt += 1  # skipped, as the gateway's own replay does
            try:
                await sink.emit(records)
            except SinkError as exc:
                raise CliError(
                    f"{folder}: Kafka refused a batch after {replayed} events ({exc}); "
                    "the rest stays in the spool"
                ) from exc
            await asyncio.to_thread(store.commit, position)  # only after Kafka acked
            replayed += len(records)
    finally:
        await sink.aclose()
        store.close()


def _stats_table(rows: list[FolderStats]) -> None:
    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "-"

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
        console.print(table)


def _fail(exc: CliError) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(exc.code)


def register(app: typer.Typer) -> None:
    """Add the events command group."""
    events = typer.Typer(help="Read events from Kafka or a spool; replay a stopped spool.")
    app.add_typer(events, name="events")

    @events.command()
    def tail(
        kafka: Annotated[list[str] | None, KAFKA] = None,
        spool: Annotated[Path | None, SPOOL] = None,
        config: Annotated[Path | None, CONFIG] = None,
        topic: Annotated[list[str] | None, TOPIC] = None,
        type_: Annotated[list[str] | None, TYPE] = None,
        last: Annotated[int, typer.Option("--last", "-n", help="Events shown first")] = 10,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Raw JSON lines")] = False,
        keys: Annotated[
            str | None, typer.Option("--keys", help="Key store (dir, redis://)")
        ] = None,
    ) -> None:
        """The last events (pending ones, for a spool), then new ones with --follow."""
        from cli.privacy import key_reader_for
        from feedback.privacy import KeyStoreError

        types = set(type_) if type_ else None
        try:
            source = _source(kafka, spool, config)
            reader = key_reader_for(keys, source.spool)
            with contextlib.suppress(KeyboardInterrupt):
                if source.kafka is not None:
                    topics = _topics_for(topic, type_)
                    _tail_kafka(source.kafka, topics, types, last, follow, as_json, reader)
                elif source.spool is not None:
                    wanted = set(topic) if topic else None
                    _tail_spool(source.spool, wanted, types, last, follow, as_json, reader)
        except KeyStoreError as exc:
            raise _fail(CliError(str(exc))) from exc
        except CliError as exc:
            raise _fail(exc) from exc

    @events.command()
    def stats(
        kafka: Annotated[list[str] | None, KAFKA] = None,
        spool: Annotated[Path | None, SPOOL] = None,
        config: Annotated[Path | None, CONFIG] = None,
        topic: Annotated[list[str] | None, TOPIC] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """Spool: segments, bytes, pending events by type and variant. Kafka: topic offsets."""
        try:
            source = _source(kafka, spool, config)
            if source.kafka is not None:
                rows = kafka_stats(source.kafka, topic)
                if as_json:
                    print(json.dumps({"kafka": rows}, indent=2))
                    return
                table = Table(title=f"Kafka {', '.join(source.kafka)}")
                for column in ("topic", "partitions", "records", "end offsets"):
                    table.add_column(column)
                for row in rows:
                    ends = " ".join(f"{p}:{o}" for p, o in row["end_offsets"].items())
                    table.add_row(row["topic"], str(row["partitions"]), str(row["records"]), ends)
                console.print(table)
            elif source.spool is not None:
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
            raise _fail(exc) from exc

    @events.command()
    def replay(
        kafka: Annotated[list[str] | None, KAFKA] = None,
        spool: Annotated[Path | None, SPOOL] = None,
        config: Annotated[Path | None, CONFIG] = None,
    ) -> None:
        """Re-send a stopped gateway's pending spool to Kafka, in order (at least once)."""
        from gateway.settings import ConfigError, load_settings

        try:
            try:
                events_config = load_settings(config).events
            except ConfigError as exc:
                raise CliError(str(exc)) from exc
            servers = _servers(kafka)
            if servers is not None:
                kafka_config = KafkaConfig(bootstrap_servers=servers)
            elif events_config.kafka is not None:
                kafka_config = events_config.kafka
            else:
                raise CliError("no Kafka to replay to: give --kafka or a config with events.kafka")
            root = spool or events_config.spool.dir
            folders = spool_folders(root)
            live = [str(f) for f in folders if is_locked(f)]
            if live:  # refuse before touching any folder, not half-way through
                raise CliError(
                    f"spool {', '.join(live)} is locked by a running gateway: stop it first "
                    "(a running gateway replays its own spool when Kafka is back)",
                    code=2,
                )
            total = 0
            for folder in folders:
                sent, corrupt = asyncio.run(
                    replay_folder(folder, kafka_config, events_config.spool)
                )
                total += sent
                note = f" ({corrupt} unreadable lines skipped)" if corrupt else ""
                console.print(f"{folder}: replayed {sent} events{note}")
            console.print(f"replayed {total} events to {', '.join(kafka_config.bootstrap_servers)}")
        except CliError as exc:
            raise _fail(exc) from exc
