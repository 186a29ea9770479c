"""`loopgate events tail|stats|replay` on real spool files and a real (tansu) broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
import yaml
from typer.testing import CliRunner

from cli.events import register
from feedback.config import KafkaConfig
from feedback.schema import AUDIT_TOPIC, COMPLETIONS_TOPIC, FEEDBACK_TOPIC, Event, to_json
from feedback.sinks.base import Record
from feedback.sinks.kafka import KafkaSink
from feedback.sinks.spool import Spool
from feedback.sinks.spool_reader import SpoolReader
from tests.support.kafka import TansuBroker, consume_all
from tests.support.ports import wait_until
from tests.unit.feedback.events import audit, completion, feedback

ROOT = Path(__file__).resolve().parents[3]


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root."""

    register(app)
    return app


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(_cli(), ["events", *args])
    return result.exit_code, result.output


def _workload() -> list[Event]:
    """Two answers with feedback on each, and a flag change, in emission order."""
    return [
        completion("lg1.a.m", text="first"),
        feedback("lg1.a.m", kind="thumbs_down"),
        completion("lg1.b.m", text="second", variant="control"),
        feedback("lg1.a.m", kind="edit"),
        feedback("lg1.b.m", kind="thumbs_up", variant="control"),
        audit(),
    ]


def _spool(root: Path, events: list[Event], segment_bytes: int = 4096) -> Spool:
    """A gateway-like spool folder `root/gw` holding the events; still open (locked)."""
    spool = Spool.open(root, "gw", segment_bytes, 1 << 22)  # room for every event the tests write
    spool.append([to_json(e) for e in events])
    return spool


@pytest.fixture
def stopped_spool(tmp_path: Path) -> tuple[Path, list[Event]]:
    """The spool root of a stopped gateway: segments, cursor, lock released."""
    events = _workload()
    spool = _spool(tmp_path / "spool", events)
    spool.close()
    return tmp_path / "spool", events


def test_stats_counts_pending_events_by_type_variant_and_kind(tmp_path: Path) -> None:
    events = _workload()
    spool = _spool(tmp_path / "spool", events)
    _, position = spool.read(2)  # the first two were replayed already
    spool.commit(position)
    try:
        code, out = _invoke("stats", "--spool", str(tmp_path / "spool"), "--json")
        assert code == 0, out
        (folder,) = json.loads(out)["spool"]
        assert folder["live"] is True  # this process holds the lock, as a gateway would
        assert folder["segments"] == spool.segments
        assert folder["bytes"] == spool.total_bytes
        assert folder["pending_bytes"] == spool.pending_bytes
        assert folder["pending_events"] == 4
        assert folder["by_type"] == {"completion": 1, "feedback": 2, "flag_change": 1}
        assert folder["by_variant"] == {"support-bot/canary": 1, "support-bot/control": 2}
        assert folder["by_kind"] == {"edit": 1, "thumbs_up": 1}
    finally:
        spool.close()
    code, out = _invoke("stats", "--spool", str(tmp_path / "spool"))
    assert code == 0, out
    assert "stopped" in out
    assert "feedback=2" in out


def test_tail_spool_json_pretty_and_filters(stopped_spool: tuple[Path, list[Event]]) -> None:
    root, events = stopped_spool
    code, out = _invoke("tail", "--spool", str(root), "--json", "--last", "100")
    assert code == 0, out
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == [
        str(e.event_id) for e in events
    ]
    code, out = _invoke("tail", "--spool", str(root / "gw"), "--json", "--type", "feedback")
    assert [json.loads(line)["body"]["kind"] for line in out.splitlines()] == [
        "thumbs_down",
        "edit",
        "thumbs_up",
    ]
    code, out = _invoke("tail", "--spool", str(root), "--json", "-n", "2")
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["feedback", "flag_change"]
    code, out = _invoke("tail", "--spool", str(root), "--topic", AUDIT_TOPIC)
    assert code == 0
    assert "flag_change" in out
    assert "set_weights by ops@example.com" in out
    assert "completion" not in out
    code, out = _invoke("tail", "--spool", str(root), "--type", "completion")
    assert "support-bot/control" in out
    assert "answer to second" in out


def test_config_names_the_spool(stopped_spool: tuple[Path, list[Event]], tmp_path: Path) -> None:
    root, _ = stopped_spool
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"events": {"spool": {"dir": str(root)}}}))
    code, out = _invoke("stats", "--config", str(config), "--json")
    assert code == 0, out
    assert json.loads(out)["spool"][0]["pending_events"] == 6
    code, out = _invoke("stats", "--spool", str(tmp_path / "nowhere"))
    assert code == 1
    assert "no spool directory" in out


def test_reader_follows_appends_rotation_and_replay(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, "gw", 4096, 1 << 20)
    try:
        reader = SpoolReader(spool.directory)
        first = [to_json(completion(f"lg1.{i}.m")) for i in range(3)]
        spool.append(first)
        assert list(reader.read()) == first
        assert list(reader.read()) == []
        # A writer mid-line: the partial line waits until it is whole.
        active = max(spool.directory.glob("*.jsonl"))
        with active.open("ab") as handle:
            handle.write(b'{"type": "feedb')
        assert list(reader.read()) == []
        spool.close()
        with active.open("ab") as handle:
            handle.write(b'ack"}\n')
        assert list(reader.read()) == [b'{"type": "feedback"}']
        spool = Spool.open(tmp_path, "gw", 4096, 1 << 20)
        more = [to_json(feedback(f"lg1.{i}.m")) for i in range(24)]  # several segments
        spool.append(more)
        assert spool.segments > 2
        assert list(reader.read()) == more
        _, position = spool.read(1000)
        spool.commit(position)  # replayed: the segments are deleted under the reader
        late = [to_json(audit())]
        spool.append(late)
        assert list(reader.read()) == late
    finally:
        spool.close()


def test_replay_refuses_a_live_gateways_spool(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "spool", _workload())
    try:
        code, out = _invoke("replay", "--spool", str(tmp_path / "spool"), "--kafka", "127.0.0.1:1")
        assert code == 2
        assert "locked by a running gateway" in " ".join(out.split())
        assert spool.pending_bytes == spool.total_bytes  # nothing moved
    finally:
        spool.close()


def test_replay_without_kafka_says_so(stopped_spool: tuple[Path, list[Event]]) -> None:
    root, _ = stopped_spool
    code, out = _invoke("replay", "--spool", str(root))
    assert code == 1
    assert "no Kafka to replay to" in out


def test_replay_sends_pending_events_in_order_once(
    stopped_spool: tuple[Path, list[Event]], kafka_broker: TansuBroker
) -> None:
    root, events = stopped_spool
    code, out = _invoke("replay", "--spool", str(root), "--kafka", kafka_broker.bootstrap)
    assert code == 0, out
    assert "replayed 6 events" in out
    records = consume_all(
        kafka_broker.bootstrap, [COMPLETIONS_TOPIC, FEEDBACK_TOPIC, AUDIT_TOPIC], len(events)
    )
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == sorted(
        str(e.event_id) for e in events
    )
    for record in records:
        body = orjson.loads(record.value)["body"]
        assert record.key.decode() == body.get("response_id", body.get("what"))
    feedback_a = [orjson.loads(r.value)["body"]["kind"] for r in sorted(records,
                  key=lambda r: (r.partition, r.offset)) if r.topic == FEEDBACK_TOPIC
                  and r.key == b"lg1.a.m"]  # fmt: skip
    assert feedback_a == ["thumbs_down", "edit"]  # one key, one partition, spool order
    code, out = _invoke("stats", "--spool", str(root), "--json")
    assert json.loads(out)["spool"][0]["pending_events"] == 0
    code, out = _invoke("replay", "--spool", str(root), "--kafka", kafka_broker.bootstrap)
    assert code == 0
    assert "replayed 0 events" in out


def test_replay_reports_progress_after_each_acknowledged_batch(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    from feedback.config import SpoolConfig
    from feedback.sinks.spool_reader import folder_stats, replay_folder

    events = [completion(f"lg1.p{i}.m", text=f"n{i}") for i in range(1200)]
    spool = _spool(tmp_path / "spool", events, segment_bytes=1 << 16)
    spool.close()
    folder = tmp_path / "spool" / "gw"
    pending = folder_stats(folder).pending_bytes
    calls: list[tuple[int, int]] = []
    kafka = KafkaConfig(bootstrap_servers=[kafka_broker.bootstrap])
    sent, corrupt, aside = asyncio.run(
        replay_folder(folder, kafka, SpoolConfig(), lambda n, size: calls.append((n, size)))
    )
    assert (sent, corrupt, aside) == (1200, 0, 0)
    assert [n for n, _ in calls] == [500, 500, 200]  # one call per acknowledged batch
    assert sum(size for _, size in calls) == pending


def test_tail_since_and_short_ids(stopped_spool: tuple[Path, list[Event]]) -> None:
    root, events = stopped_spool
    # The sample events are from 2023-11-14 22:13 UTC.
    code, out = _invoke("tail", "--spool", str(root), "--since", "2023-11-14")
    assert code == 0, out
    assert len(out.splitlines()) == len(events)
    code, out = _invoke("tail", "--spool", str(root), "--since", "2023-11-15T00:00")
    assert (code, out) == (0, "")
    code, out = _invoke("tail", "--spool", str(root), "--since", "1h")
    assert (code, out) == (0, "")
    code, out = _invoke("tail", "--spool", str(root), "--since", "yesterday")
    assert code == 2
    assert "Traceback" not in out
    assert "'yesterday' is neither a time ago" in " ".join(out.split())


def _produce(broker: TansuBroker, events: list[Event]) -> None:
    async def main() -> None:
        sink = KafkaSink(KafkaConfig(bootstrap_servers=[broker.bootstrap], partitions=2))
        try:
            await sink.emit([Record(e.topic, e.key, to_json(e)) for e in events])
        finally:
            await sink.aclose()

    asyncio.run(main())


def test_kafka_stats_and_tail(kafka_broker: TansuBroker) -> None:
    events = _workload()
    _produce(kafka_broker, events)
    code, out = _invoke("stats", "--kafka", kafka_broker.bootstrap, "--json")
    assert code == 0, out
    rows = {row["topic"]: row for row in json.loads(out)["kafka"]}
    assert rows[COMPLETIONS_TOPIC]["records"] == 2
    assert rows[FEEDBACK_TOPIC]["records"] == 3
    assert rows[AUDIT_TOPIC]["records"] == 1
    assert rows[FEEDBACK_TOPIC]["partitions"] == 2
    code, out = _invoke("tail", "--kafka", kafka_broker.bootstrap, "--json", "--type", "feedback")
    assert code == 0, out
    tailed = [json.loads(line) for line in out.splitlines()]
    assert sorted(e["event_id"] for e in tailed) == sorted(
        str(e.event_id) for e in events if e.type == "feedback"
    )
    code, out = _invoke("tail", "--kafka", kafka_broker.bootstrap, "--topic", AUDIT_TOPIC)
    assert code == 0, out
    assert "set_weights by ops@example.com" in out
    code, out = _invoke("stats", "--kafka", kafka_broker.bootstrap)
    assert code == 0, out
    assert COMPLETIONS_TOPIC in out


def _follow(args: list[str], expected: int) -> list[dict[str, Any]]:
    """Run `loopgate events tail --follow --json ...` until `expected` lines; stop it by pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "events", "tail", "--follow", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(lines) >= expected, 60, f"{expected} tailed events", 0.1)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        reader.join(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()
    return lines


def test_follow_spool_and_kafka(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    spool = Spool.open(tmp_path, "gw", 4096, 1 << 20)
    first = completion("lg1.f.m")
    spool.append([to_json(first)])
    later = [feedback("lg1.f.m", kind="thumbs_up"), feedback("lg1.f.m", kind="edit")]

    # Written while the tail is already following (it starts in about a second).
    timer = threading.Timer(3.0, lambda: spool.append([to_json(e) for e in later]))
    timer.start()
    try:
        tailed = _follow(["--spool", str(tmp_path)], 3)
    finally:
        timer.cancel()
        spool.close()
    assert [e["event_id"] for e in tailed] == [str(e.event_id) for e in [first, *later]]

    _produce(kafka_broker, [first])
    threading.Timer(4.0, _produce, (kafka_broker, later)).start()
    tailed = _follow(["--kafka", kafka_broker.bootstrap, "--topic", FEEDBACK_TOPIC,
                      "--topic", COMPLETIONS_TOPIC], 3)  # fmt: skip
    assert {e["event_id"] for e in tailed} == {str(e.event_id) for e in [first, *later]}
