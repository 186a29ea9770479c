"""The spool: append, rotate, replay in order, bound, recovery, one process per slot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from feedback.sinks.base import Record, SpoolFull
from feedback.sinks.spool import Spool, SpoolSink, record_from_line


def line(i: int, size: int = 0) -> bytes:
    return orjson.dumps(
        {"type": "feedback", "body": {"response_id": f"r{i % 3}"}, "i": i, "pad": "x" * size}
    )


def drain(spool: Spool, batch: int = 7) -> list[int]:
    seen: list[int] = []
    while True:
        lines, position = spool.read(batch)
        if not lines:
            return seen
        seen += [orjson.loads(raw)["i"] for raw in lines]
        spool.commit(position)


def test_append_rotate_and_replay_in_order(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=10**7)
    for start in range(0, 300, 30):
        assert spool.append([line(i, 50) for i in range(start, start + 30)]) == 30
    assert spool.segments > 3  # rotated
    assert drain(spool) == list(range(300))
    assert spool.pending_bytes == 0
    assert spool.segments == 1  # replayed segments are deleted
    spool.close()


def test_replay_survives_restart_and_torn_tail(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=10**7)
    spool.append([line(i, 50) for i in range(100)])
    _, position = spool.read(40)
    spool.commit(position)
    spool.close()
    directory = tmp_path / "gw"
    last = max(directory.glob("*.jsonl"))
    with last.open("ab") as handle:
        handle.write(b'{"type": "feedb')  # a crash mid-write
    reopened = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=10**7)
    assert drain(reopened) == list(range(40, 100))
    reopened.close()


def test_bound_refuses_and_counts(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=8192)
    accepted = spool.append([line(i, 100) for i in range(200)])
    assert 0 < accepted < 200
    assert spool.refused == 200 - accepted
    assert spool.total_bytes <= 8192
    assert spool.append([line(999, 100)]) == 0
    # Replaying frees room again.
    assert drain(spool) == list(range(accepted))
    assert spool.append([line(1000, 100)]) == 1
    spool.close()


def test_sink_raises_spool_full_with_count(tmp_path: Path) -> None:
    async def main() -> None:
        sink = await SpoolSink.open(tmp_path, "gw", segment_bytes=4096, max_bytes=4096)
        records = [record_from_line(line(i, 100)) for i in range(100)]
        with pytest.raises(SpoolFull) as info:
            await sink.emit(records)
        assert 0 < info.value.accepted < 100
        assert "full" in str(info.value)
        await sink.aclose()

    asyncio.run(main())


def test_second_process_gets_its_own_slot(tmp_path: Path) -> None:
    first = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=10**6)
    second = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=10**6)
    assert first.directory.name == "gw"
    assert second.directory.name == "gw.1"
    first.close()
    second.close()
    again = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=10**6)
    assert again.directory.name == "gw"
    again.close()


def test_record_from_line_routes_by_type() -> None:
    record = record_from_line(line(4))
    assert record == Record("loopgate.feedback.v1", "r1", line(4))
    with pytest.raises(ValueError, match="not a JSON object"):
        record_from_line(b"[1]")
    with pytest.raises(orjson.JSONDecodeError):
        record_from_line(b"not json")


def test_iter_lines_does_not_move_the_cursor(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, "gw", segment_bytes=4096, max_bytes=10**6)
    spool.append([line(i) for i in range(10)])
    assert [orjson.loads(raw)["i"] for raw in spool.iter_lines()] == list(range(10))
    assert drain(spool) == list(range(10))
    spool.close()
