"""Where events come from: JSON-lines exports, spool segments, or Kafka via a local log.

Kafka is read with the build's own consumer group. Each polled batch is appended to a
local event log (fsync'd) *before* its offsets are committed, and every build reads the
whole log: a crash between the two only re-reads a batch (event_id dedupes it), and a
rerun resumes from the committed offsets with nothing lost.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from feedback.schema import COMPLETIONS_TOPIC, FEEDBACK_TOPIC
from feedback.sinks.spool import SEGMENT_SUFFIX

log = logging.getLogger(__name__)

LOG_FILE = "events.jsonl"
STATE_FILE = "state.json"


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for line in handle:
            yield line.rstrip(b"\n")


def jsonl_files(paths: Iterable[Path]) -> list[Path]:
    """The given files, and every *.jsonl below the given directories, in name order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*.jsonl") if p.is_file()))
        else:
            out.append(path)
    return out


def read_jsonl(paths: Iterable[Path]) -> Iterator[bytes]:
    """Event lines from exported JSON-lines files (one event per line)."""
    for path in jsonl_files(paths):
        yield from _lines(path)


def spool_segments(root: Path) -> list[Path]:
    """Segment files under a spool root (every slot directory), oldest first per slot."""
    segments = [p for p in root.rglob(f"*{SEGMENT_SUFFIX}") if p.is_file() and p.stem.isdigit()]
    return sorted(segments, key=lambda p: (str(p.parent), int(p.stem)))


def read_spool(root: Path) -> Iterator[bytes]:
    """Event lines still in a spool, read-only and unlocked so a running gateway keeps it.

    A torn last line of a segment being written is unreadable JSON: the parser skips it.
    """
    for path in spool_segments(root):
        yield from _lines(path)


class EventLog:
    """An append-only JSON-lines file of raw events in a state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOG_FILE

    def append(self, values: Iterable[bytes]) -> int:
        """Append lines and fsync; returns how many."""
        data = [value.replace(b"\n", b" ") + b"\n" for value in values]
        if not data:
            return 0
        with open(self.path, "ab") as handle:
            handle.write(b"".join(data))
            handle.flush()
            os.fsync(handle.fileno())
        return len(data)

    def lines(self) -> Iterator[bytes]:
        """Every line so far (a torn tail after a crash is skipped by the parser)."""
        if self.path.exists():
            yield from _lines(self.path)

    def check_group(self, bootstrap: list[str], group_id: str) -> None:
        """Bind the directory to one broker and group: another group's offsets would not match."""
        state = self.directory / STATE_FILE
        mine = {"bootstrap_servers": sorted(bootstrap), "group_id": group_id}
        if state.exists():
            theirs = orjson.loads(state.read_bytes())
            if theirs.get("group_id") != group_id:
                raise ValueError(
                    f"{self.directory} holds events of consumer group {theirs.get('group_id')!r},"
                    f" not {group_id!r}: use another state directory"
                )
            return
        state.write_bytes(orjson.dumps(mine))


@dataclass
class PullStats:
    """What one pull read and committed."""

    records: int = 0
    committed: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class KafkaSource:
    """Reads both event topics from committed offsets (or the start) until caught up."""

    bootstrap_servers: list[str]
    group_id: str = "loopgate-datasets"
    client_id: str = "loopgate-datasets"
    idle_s: float = 2.0  # caught up when no record came for this long
    max_poll_records: int = 500
    timeout_s: float = 600.0

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_poll_records,
        )

    def _assign(self, consumer: Any) -> list[Any]:
        from kafka import TopicPartition

        # Manual assignment with the group's committed offsets: no group join, so no
        # rebalance to wait for and no member left stuck if the build dies mid-join.
        parts: list[Any] = []
        deadline = time.monotonic() + 10
        for topic in (COMPLETIONS_TOPIC, FEEDBACK_TOPIC):
            ids = consumer.partitions_for_topic(topic)
            while ids is None and time.monotonic() < deadline:
                consumer.poll(timeout_ms=100)  # refreshes metadata
                ids = consumer.partitions_for_topic(topic)
            parts.extend(TopicPartition(topic, pid) for pid in sorted(ids or ()))
        consumer.assign(parts)
        for tp in parts:
            committed = consumer.committed(tp)
            if committed is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        return parts

    def pull(self, into: EventLog, stop_after: int | None = None) -> PullStats:
        """Append new events to the log, committing offsets after each fsync'd batch.

        `stop_after` simulates a crash: stop after that many records, leaving the current
        batch written but uncommitted.
        """
        from kafka.structs import OffsetAndMetadata

        into.check_group(self.bootstrap_servers, self.group_id)
        stats = PullStats()
        consumer = self._consumer()
        try:
            parts = self._assign(consumer)
            if not parts:
                return stats
            deadline = time.monotonic() + self.timeout_s
            idle_since = time.monotonic()
            while time.monotonic() < deadline:
                batches = consumer.poll(timeout_ms=200)
                if not batches:
                    if (
                        self._caught_up(consumer, parts)
                        or time.monotonic() - idle_since > self.idle_s
                    ):
                        break
                    continue
                idle_since = time.monotonic()
                for tp, records in batches.items():
                    values = [r.value for r in records if r.value is not None]
                    if stop_after is not None and stats.records + len(values) >= stop_after:
                        into.append(values[: stop_after - stats.records])
                        stats.records = stop_after
                        stats.stopped_early = True
                        return stats
                    stats.records += into.append(values)
                    consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)})
                    stats.committed += len(records)
            return stats
        finally:
            consumer.close(autocommit=False)

    @staticmethod
    def _caught_up(consumer: Any, parts: list[Any]) -> bool:
        # Fetch responses carry the true high watermark; some brokers (tansu) answer
        # ListOffsets with the last batch's base offset, so end_offsets() is not used.
        for tp in parts:
            high = consumer.highwater(tp)
            if high is None or consumer.position(tp) < high:
                return False
        return True
