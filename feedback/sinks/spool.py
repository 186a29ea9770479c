"""The local spool: append-only JSON-lines segments, fsync'd per batch, bounded, replayable."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from feedback.config import SpoolConfig
from feedback.schema import route_of
from feedback.sinks.base import Record, SpoolFull

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
CURSOR_FILE = "cursor.json"
LOCK_FILE = "LOCK"
# Each folder's events that Kafka can never take (a spool folder of its own, never replayed
# on its own: `loopgate events replay --spool <folder>/dead-letter` re-sends it).
DEAD_LETTER = "dead-letter"
MAX_SLOTS = 64
_READ_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolPosition:
    """Where replay stands: a segment number and a byte offset in it."""

    segment: int
    offset: int


class SpoolLocked(Exception):
    """Every spool slot under the directory is held by another process."""


def _segment_name(number: int) -> str:
    return f"{number:016d}{SEGMENT_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Segment files in one directory, owned by one process (flock); thread-safe."""

    def __init__(self, directory: Path, segment_bytes: int, max_bytes: int, lock_fd: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        for path in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")):
            if path.stem.isdigit():
                self._sizes[int(path.stem)] = path.stat().st_size
        if not self._sizes:
            self._sizes[1] = 0
        self._active = max(self._sizes)
        self._truncate_torn_tail(self._active)
        self._file: IO[bytes] = open(self._path(self._active), "ab")  # noqa: SIM115
        self._cursor = self._load_cursor()
        self.refused = 0

    @classmethod
    def open(cls, root: Path, name: str, segment_bytes: int, max_bytes: int) -> Spool:
        """The first free slot `root/name`, `root/name.1`, ...: one per process (flock)."""
        root.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            directory = root / (name if slot == 0 else f"{name}.{slot}")
            directory.mkdir(exist_ok=True)
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(directory, segment_bytes, max_bytes, fd)
        raise SpoolLocked(f"all {MAX_SLOTS} spool slots under {root} are in use")

    def _path(self, number: int) -> Path:
        return self.directory / _segment_name(number)

    def _truncate_torn_tail(self, number: int) -> None:
        # A crash mid-write leaves a partial last line: cut back to the last newline.
        path = self._path(number)
        if not path.exists():
            return
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            log.warning("spool %s: dropping a torn tail of %d bytes", path, len(data) - keep)
            with open(path, "r+b") as handle:
                handle.truncate(keep)
        self._sizes[number] = keep

    def _load_cursor(self) -> SpoolPosition:
        first = min(self._sizes)
        try:
            raw = orjson.loads((self.directory / CURSOR_FILE).read_bytes())
            position = SpoolPosition(int(raw["segment"]), int(raw["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return SpoolPosition(first, 0)
        if position.segment not in self._sizes:
            return SpoolPosition(first, 0)
        return SpoolPosition(position.segment, min(position.offset, self._sizes[position.segment]))

    @property
    def total_bytes(self) -> int:
        """Bytes on disk in all segments (what the bound limits)."""
        return sum(self._sizes.values())

    @property
    def segments(self) -> int:
        """Number of segment files."""
        return len(self._sizes)

    @property
    def pending_bytes(self) -> int:
        """Bytes written and not yet replayed."""
        cursor = self._cursor
        return sum(size for n, size in self._sizes.items() if n >= cursor.segment) - cursor.offset

    def append(self, values: Sequence[bytes]) -> int:
        """Append lines in order and fsync once; returns how many fit under the bound."""
        with self._lock:
            room = self.max_bytes - self.total_bytes
            accepted = 0
            for value in values:
                if b"\n" in value:
                    raise ValueError("spool values must be single-line JSON")
                size = len(value) + 1
                if size > room:
                    break
                self._file.write(value + b"\n")
                self._sizes[self._active] += size
                room -= size
                accepted += 1
                if self._sizes[self._active] >= self.segment_bytes:
                    self._rotate()
            self._file.flush()
            os.fsync(self._file.fileno())
            self.refused += len(values) - accepted
            return accepted

    def _rotate(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._active += 1
        self._sizes[self._active] = 0
        self._file = open(self._path(self._active), "ab")  # noqa: SIM115
        _fsync_dir(self.directory)

    def read(self, max_records: int) -> tuple[list[bytes], SpoolPosition]:
        """Up to max_records lines from the replay cursor, oldest first, and where they end."""
        with self._lock:
            return self._read_from(self._cursor, max_records)

    def _read_from(
        self, position: SpoolPosition, max_records: int
    ) -> tuple[list[bytes], SpoolPosition]:
        self._file.flush()
        out: list[bytes] = []
        segment, offset = position.segment, position.offset
        while len(out) < max_records and segment in self._sizes:
            size = self._sizes[segment]
            if offset < size:
                with open(self._path(segment), "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(min(size - offset, _READ_CHUNK))
                    if b"\n" not in data:
                        data += handle.read(size - offset - len(data))  # one line past a chunk
                end = data.rfind(b"\n") + 1
                take = data[:end].split(b"\n")[:-1][: max_records - len(out)]
                out.extend(take)
                offset += sum(len(line) + 1 for line in take)
                if offset < size:
                    break  # more in this segment than one read or one batch holds
            if segment == self._active:
                break
            segment, offset = segment + 1, 0
        return out, SpoolPosition(segment, offset)

    def commit(self, position: SpoolPosition) -> None:
        """Mark everything before `position` replayed; delete segments wholly behind it."""
        with self._lock:
            for number in sorted(self._sizes):
                if number >= position.segment or number == self._active:
                    break
                self._path(number).unlink(missing_ok=True)
                del self._sizes[number]
            if position.segment == self._active and position.offset >= self._sizes[self._active]:
                # Everything replayed: start a fresh segment so the old one can go.
                old = self._active
                self._rotate()
                self._path(old).unlink(missing_ok=True)
                del self._sizes[old]
                position = SpoolPosition(self._active, 0)
            self._cursor = position
            tmp = self.directory / f"{CURSOR_FILE}.tmp"
            tmp.write_bytes(orjson.dumps({"segment": position.segment, "offset": position.offset}))
            tmp.replace(self.directory / CURSOR_FILE)

    def iter_lines(self) -> Iterator[bytes]:
        """Every pending line, oldest first, without moving the cursor (tail, stats)."""
        with self._lock:
            position = self._cursor
        while True:
            with self._lock:
                lines, position = self._read_from(position, 1000)
            if not lines:
                return
            yield from lines

    def close(self) -> None:
        """fsync, close the active segment and release the directory lock."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = -1


def record_from_line(line: bytes) -> Record:
    """The Kafka record for a spooled line (topic and key come from the event itself)."""
    data = orjson.loads(line)
    if not isinstance(data, dict):
        raise ValueError("spooled line is not a JSON object")
    topic, key = route_of(data)
    return Record(topic, key, line)


def set_aside(folder: Path, records: Sequence[Record], config: SpoolConfig) -> None:
    """Append records Kafka can never take to `folder`'s dead-letter spool; OSError if full."""
    dead = Spool.open(folder, DEAD_LETTER, config.segment_bytes, config.dead_letter_max_bytes)
    try:
        accepted = dead.append([record.value for record in records])
    finally:
        dead.close()
    if accepted < len(records):
        raise OSError(f"dead-letter spool {dead.directory} is full")


class SpoolSink:
    """Async face of a Spool: every file operation runs in one dedicated thread, in order."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopgate-spool")

    @classmethod
    async def open(cls, root: Path, name: str, segment_bytes: int, max_bytes: int) -> SpoolSink:
        """Open (lock, scan, recover) the spool off the event loop."""
        spool = await asyncio.to_thread(Spool.open, root, name, segment_bytes, max_bytes)
        return cls(spool)

    async def emit(self, records: Sequence[Record]) -> None:
        """Append and fsync; raises SpoolFull (with the count written) at the bound."""
        loop = asyncio.get_running_loop()
        values = [record.value for record in records]
        accepted = await loop.run_in_executor(self._executor, self.spool.append, values)
        if accepted < len(values):
            raise SpoolFull(
                f"spool {self.spool.directory} is full ({self.spool.total_bytes} of "
                f"{self.spool.max_bytes} bytes): {len(values) - accepted} events refused",
                accepted,
            )

    async def read(self, max_records: int) -> tuple[list[bytes], SpoolPosition]:
        """Oldest unreplayed lines (see Spool.read)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.spool.read, max_records)

    async def commit(self, position: SpoolPosition) -> None:
        """Mark lines replayed (see Spool.commit)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.spool.commit, position)

    async def aclose(self) -> None:
        """Close the spool after every queued file operation."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.spool.close)
        self._executor.shutdown(wait=True)
