"""File sources: spool segments (read-only, beside a live spool) and exported JSON lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.datasets.build import BuildConfig, build
from feedback.datasets.join import JoinStats, parse_lines
from feedback.datasets.sources import EventLog, read_jsonl, read_spool, spool_segments
from feedback.schema import Event, to_json
from feedback.sinks.spool import Spool
from tests.unit.datasets.events import completion, feedback


def _events() -> list[Event]:
    return [
        completion("r1", text="old"),
        feedback("r1", "edit", edited_text="new"),
        completion("r2", prompt="p2", text="ok"),
        feedback("r2", "thumbs_up"),
    ]


def test_spool_segments_are_read_in_order_while_the_spool_stays_open(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool", "gw", segment_bytes=4096, max_bytes=1 << 20)
    try:
        events = _events()
        for event in events:  # tiny segments: the events span several files
            spool.append([to_json(event)] * 6)
        assert spool.segments > 1
        # A torn last line, as a crash mid-write leaves it.
        active = spool_segments(tmp_path / "spool")[-1]
        with active.open("ab") as handle:
            handle.write(b'{"event_id": "torn')
        stats = JoinStats()
        built = build(parse_lines(read_spool(tmp_path / "spool"), stats), BuildConfig(), stats)
    finally:
        spool.close()
    assert stats.unreadable == 1
    assert stats.duplicate_events == 5 * len(events)
    assert built.content_hash == build(events, BuildConfig()).content_hash


def test_jsonl_files_and_directories(tmp_path: Path) -> None:
    events = _events()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.jsonl").write_bytes(b"".join(to_json(e) + b"\n" for e in events[:2]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(to_json(e) + b"\n" for e in events[2:]))
    lines = list(read_jsonl([tmp_path / "a", tmp_path / "b.jsonl"]))
    assert len(lines) == 4
    assert build(parse_lines(lines, JoinStats()), BuildConfig()).content_hash == (
        build(events, BuildConfig()).content_hash
    )


def test_an_event_log_belongs_to_one_consumer_group(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "state")
    log.check_group(["k:9092"], "g1")
    log.check_group(["k:9092"], "g1")
    with pytest.raises(ValueError, match="consumer group"):
        log.check_group(["k:9092"], "g2")
    assert log.append([b'{"a": 1}', b"{}"]) == 2
    assert list(log.lines()) == [b'{"a": 1}', b"{}"]
