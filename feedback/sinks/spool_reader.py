"""The spool seen from outside the process that writes it: folders, tailing, stats, replay.

A live gateway holds its folder's lock and owns the replay cursor; readers here never take
that lock to read (tail and stats follow a live spool), and replay takes it first, so it
only ever runs on a stopped gateway's spool. The on-disk format is spool.py's.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from feedback.config import KafkaConfig, SpoolConfig
from feedback.sinks.spool import CURSOR_FILE, LOCK_FILE, SEGMENT_SUFFIX, Spool, SpoolPosition


class SpoolError(Exception):
    """No spool where one was named, or one that cannot be replayed now."""


class SpoolBusy(SpoolError):
    """A running gateway holds the folder's lock."""


def _is_folder(path: Path) -> bool:
    return (path / LOCK_FILE).exists() or any(path.glob(f"*{SEGMENT_SUFFIX}"))


def spool_folders(path: Path) -> list[Path]:
    """The per-process spool folders at `path`: itself, or its subfolders (`name`, `name.1`)."""
    if not path.is_dir():
        raise SpoolError(f"no spool directory at {path}")
    if _is_folder(path):
        return [path]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and _is_folder(p))
    if not folders:
        raise SpoolError(f"no spool folders under {path}")
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


def segments(folder: Path) -> dict[int, Path]:
    """Segment files by number."""
    return {int(p.stem): p for p in folder.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit()}


def read_cursor(folder: Path, numbers: dict[int, Path]) -> SpoolPosition:
    """Where replay stands, as the writer last saved it (the first segment if unknown)."""
    first = min(numbers, default=1)
    try:
        raw = orjson.loads((folder / CURSOR_FILE).read_bytes())
        position = SpoolPosition(int(raw["segment"]), int(raw["offset"]))
    except (OSError, ValueError, KeyError, TypeError):
        return SpoolPosition(first, 0)
    return position if position.segment in numbers else SpoolPosition(first, 0)


class SpoolReader:
    """Complete lines of one folder from a position on; follows rotation and replay."""

    def __init__(self, folder: Path, position: SpoolPosition | None = None) -> None:
        self.folder = folder
        self.position = position or read_cursor(folder, segments(folder))

    def read(self) -> Iterator[bytes]:
        """Every complete line written after the position; moves the position past them."""
        while True:
            found = segments(self.folder)
            if not found:
                return
            segment, offset = self.position.segment, self.position.offset
            if segment not in found:
                # Replayed and deleted behind us, or not created yet.
                later = [n for n in found if n > segment]
                if not later:
                    return
                segment, offset = min(later), 0
            try:
                with found[segment].open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                continue  # deleted between the listing and the open: list again
            end = data.rfind(b"\n") + 1  # a writer may be mid-line: only whole lines
            for line in data[:end].split(b"\n")[:-1]:
                if line.strip():
                    yield line
            self.position = SpoolPosition(segment, offset + end)
            if end < len(data) or not any(n > segment for n in found):
                return
            self.position = SpoolPosition(min(n for n in found if n > segment), 0)


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


def _parse(line: bytes) -> dict[str, object] | None:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def folder_stats(folder: Path) -> FolderStats:
    """Segments, bytes, pending bytes and pending events by type, flag/variant and kind."""
    numbers = segments(folder)
    sizes = {n: p.stat().st_size for n, p in numbers.items()}
    cursor = read_cursor(folder, numbers)
    pending = sum(s for n, s in sizes.items() if n >= cursor.segment) - cursor.offset
    stats = FolderStats(
        str(folder), is_locked(folder), len(sizes), sum(sizes.values()), max(pending, 0)
    )
    for raw in SpoolReader(folder, cursor).read():
        event = _parse(raw)
        if event is None:
            stats.corrupt += 1
            continue
        body = event.get("body")
        body = body if isinstance(body, dict) else {}
        stats.pending_events += 1
        stats.by_type[str(event.get("type"))] += 1
        if event.get("type") in ("completion", "feedback"):
            stats.by_variant[f"{body.get('flag') or '-'}/{body.get('variant') or '-'}"] += 1
        if event.get("type") == "feedback":
            stats.by_kind[str(body.get("kind"))] += 1
    return stats


def spool_stats(root: Path) -> list[FolderStats]:
    """folder_stats of every folder under root."""
    return [folder_stats(folder) for folder in spool_folders(root)]


def lock_folder(folder: Path) -> int:
    """Take the folder's lock (as its gateway would); SpoolBusy if a gateway holds it."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolBusy(
            f"spool {folder} is locked by a running gateway: stop it first "
            "(a running gateway replays its own spool when Kafka is back)"
        ) from None
    return fd


async def replay_folder(
    folder: Path,
    kafka: KafkaConfig,
    spool: SpoolConfig,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int, int]:
    """Send the folder's pending events to Kafka in order; returns (replayed, corrupt, set aside).

    Events Kafka can never take go to the folder's dead-letter spool, as the gateway does.
    `progress(events, bytes)` is called after each batch Kafka acknowledged.
    """
    from feedback.sinks.base import Record, RecordsRejected, SinkError
    from feedback.sinks.kafka import KafkaSink
    from feedback.sinks.spool import record_from_line, set_aside

    fd = lock_folder(folder)  # before anything is read: a live gateway owns the cursor
    store = Spool(folder, spool.segment_bytes, spool.max_bytes, fd)
    sink = KafkaSink(kafka)
    replayed = corrupt = aside = 0
    try:
        while True:
            lines, position = await asyncio.to_thread(store.read, 500)
            if not lines:
                return replayed, corrupt, aside
            records: list[Record] = []
            for line in lines:
                try:
                    records.append(record_from_line(line))
                except ValueError:
                    corrupt += 1  # skipped, as the gateway's own replay does
            rejected: list[Record] = []
            try:
                await sink.emit(records)
            except RecordsRejected as exc:
                rejected = [rejection.record for rejection in exc.delivery.rejected]
                try:
                    await asyncio.to_thread(set_aside, folder, rejected, spool)
                except OSError as error:
                    msg = f"{folder}: cannot set aside what Kafka refused: {error}"
                    raise SpoolError(msg) from error
            except SinkError as exc:
                raise SpoolError(
                    f"{folder}: Kafka refused a batch after {replayed} events ({exc}); "
                    "the rest stays in the spool"
                ) from exc
            await asyncio.to_thread(store.commit, position)  # only after Kafka acked
            replayed += len(records) - len(rejected)
            aside += len(rejected)
            if progress is not None:
                progress(len(lines), sum(len(line) + 1 for line in lines))
    finally:
        await sink.aclose()
        store.close()
