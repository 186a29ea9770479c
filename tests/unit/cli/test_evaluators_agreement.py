"""`loopgate evaluators agreement` from events built here: windows, trend, widths, --json, empty."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import cli
from cli.evaluators import MIN_LABELS, parse_window
from feedback.schema import EVALUATIONS_TOPIC, FEEDBACK_TOPIC
from rollout.calibration import auc
from tests.support.kafka import TansuBroker

VERSION = "reward-model-7b@3f9c2a1d0b"
DAY0 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def _event(type_: str, when: float, **body: Any) -> dict[str, Any]:
    return {"type": type_, "time": datetime.fromtimestamp(when, UTC).isoformat(), "body": body}


def _drifting(days: int = 3, per_day: int = 80, seed: int = 1) -> list[dict[str, Any]]:
    """A reward model whose scores follow thumbs less each day; every other answer thumbed,
    every fourth rated."""
    rng = random.Random(seed)
    out = []
    for day in range(days):
        for i in range(per_day):
            rid, when = f"r{day}-{i}", DAY0 + day * 86400 + i * 60
            liked = rng.random() < 0.5
            score = liked * (2.0 - day * 0.9) + rng.gauss(0, 1)
            out.append(_event("evaluation", when, response_id=rid, evaluator="rm",
                              version=VERSION, score=score))  # fmt: skip
            if i % 2 == 0:
                kind = "thumbs_up" if liked else "thumbs_down"
                out.append(_event("feedback", when + 5, response_id=rid, kind=kind))
            if i % 4 == 1:
                value = (4 if liked else 2) + (i % 8 == 1)  # never one value for all
                out.append(_event("feedback", when + 5, response_id=rid, kind="rating",
                                  value=value))  # fmt: skip
    return out


def _spool(tmp_path: Path, events: list[dict[str, Any]]) -> Path:
    """A stopped gateway's spool folder holding `events` (plus a completion to skip)."""
    folder = tmp_path / "spool" / "gw"
    folder.mkdir(parents=True)
    other = _event("completion", DAY0, response_id="r0-0", status="ok")
    lines = [json.dumps(e) for e in [other, *events]]
    (folder / "0000000000000001.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "spool"


def _run(*args: str, columns: int = 80) -> tuple[int, str]:
    cli._register()
    result = CliRunner().invoke(
        cli.app, ["evaluators", "agreement", *args], env={"COLUMNS": str(columns), "NO_COLOR": "1"}
    )
    return result.exit_code, result.output


def _json(*args: str) -> dict[str, Any]:
    code, out = _run(*args, "--json")
    assert code == 0, out
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_one_window_per_day_and_the_auc_falling_as_the_scores_drift(tmp_path: Path) -> None:
    events = _drifting()
    doc = _json("--spool", str(_spool(tmp_path, events)))
    assert doc["window_s"] == 86400
    (rm,) = doc["evaluators"]
    assert (rm["evaluator"], rm["version"], rm["labelled"]) == ("rm", VERSION, True)
    days = rm["windows"]
    assert [d["window_start"][:10] for d in days] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert [d["scored"] for d in days] == [80, 80, 80]
    assert [d["thumbs_up"] + d["thumbs_down"] for d in days] == [40, 40, 40]
    assert [d["rated"] for d in days] == [20, 20, 20]
    # The first day's AUC, recomputed here from the events built.
    scores = {e["body"]["response_id"]: e["body"]["score"] for e in events
              if e["type"] == "evaluation"}  # fmt: skip
    thumbs = [e["body"] for e in events if e["body"].get("kind", "").startswith("thumbs")
              and e["body"]["response_id"].startswith("r0-")]  # fmt: skip
    up = [scores[t["response_id"]] for t in thumbs if t["kind"] == "thumbs_up"]
    down = [scores[t["response_id"]] for t in thumbs if t["kind"] == "thumbs_down"]
    assert days[0]["auc"] == pytest.approx(auc(up, down))
    assert days[0]["auc"] > 0.8 > 0.65 > days[2]["auc"]
    assert days[0]["spearman"] > 0.3
    assert all(d["spearman"] is not None for d in days)
    trend = rm["trend"]
    assert trend["from"][:10] == "2026-12-01"
    assert trend["to"][:10] == "2026-12-03"
    assert trend["change"] == pytest.approx(days[2]["auc"] - days[0]["auc"])
    assert trend["direction"] == "falling"


def test_window_all_is_one_row_per_version_and_hours_split_finer(tmp_path: Path) -> None:
    events = _drifting()
    events += [_event("evaluation", DAY0 + 600, response_id="r0-0", evaluator="rm",
                      version="reward-model-7b@new", score=1.0)]  # fmt: skip
    spool = str(_spool(tmp_path, events))
    doc = _json("--spool", spool, "--window", "all")
    assert doc["window_s"] is None
    versions = {v["version"]: v for v in doc["evaluators"]}
    assert set(versions) == {VERSION, "reward-model-7b@new"}
    (everything,) = versions[VERSION]["windows"]
    assert (everything["window_start"], everything["scored"]) == (None, 240)
    assert versions[VERSION]["trend"] is None
    assert versions["reward-model-7b@new"]["windows"][0]["scored"] == 1
    # 80 answers a minute apart: 1h windows are 60 + 20 answers each day.
    hourly = _json("--spool", spool, "--window", "1h")["evaluators"]
    assert [w["scored"] for w in hourly[0]["windows"]] == [60, 20] * 3
    # --since drops the earlier days (it is a time: a date, here).
    since = _json("--spool", spool, "--since", "2026-12-03")["evaluators"]
    assert [w["window_start"][:10] for w in since[0]["windows"]] == ["2026-12-03"]


@pytest.mark.parametrize("columns", [80, 120])
def test_every_number_reads_in_full_at_80_and_120_columns(tmp_path: Path, columns: int) -> None:
    spool = str(_spool(tmp_path, _drifting()))
    doc = _json("--spool", spool)
    code, out = _run("--spool", spool, columns=columns)
    assert code == 0, out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= columns, out
    for day in doc["evaluators"][0]["windows"]:
        row = next(
            line for line in lines if day["window_start"][:10] in line and "trend" not in line
        )
        cells = row.split()
        assert f"{day['auc']:.2f}" in cells
        assert f"{day['spearman']:+.2f}" in cells
        assert str(day["scored"]) in cells
    text = " ".join(out.split())
    trend = doc["evaluators"][0]["trend"]
    assert f"AUC {trend['auc_from']:.2f} (2026-12-01) -> {trend['auc_to']:.2f} (2026-12-03)" in text
    assert "falling" in text
    if columns == 80:  # stacked: a title per version, then its own table
        assert f"evaluator rm ({VERSION})" in text
        assert lines[1].split() == ["window", "scored", "up", "down", "rated", "AUC", "Spearman"]
    else:  # one table with the evaluator and version on every row
        assert lines[0].split()[:3] == ["evaluator", "version", "window"]
        assert sum(VERSION in line for line in lines) >= 3


def test_windows_with_too_few_labels_are_marked_and_explained(tmp_path: Path) -> None:
    few = _drifting(days=1, per_day=20)  # 10 thumbs, 5 ratings
    spool = str(_spool(tmp_path, few))
    doc = _json("--spool", spool)
    (day,) = doc["evaluators"][0]["windows"]
    assert day["thumbs_up"] + day["thumbs_down"] < MIN_LABELS
    assert day["few_thumbs"]
    assert day["few_ratings"]
    assert doc["evaluators"][0]["trend"] is None
    code, out = _run("--spool", spool)
    assert code == 0, out
    assert f"{day['auc']:.2f}*" in out.split()
    text = " ".join(out.split())
    assert f"* fewer than {MIN_LABELS} thumbs (AUC) or ratings (Spearman)" in text
    assert f"trend: needs two windows with {MIN_LABELS}+ thumbs" in text


def test_scores_nobody_labelled_say_there_is_nothing_to_compare_with(tmp_path: Path) -> None:
    unlabelled = [e for e in _drifting(days=1) if e["type"] == "evaluation"]
    spool = str(_spool(tmp_path, unlabelled))
    doc = _json("--spool", spool)
    (rm,) = doc["evaluators"]
    assert not rm["labelled"]
    assert rm["windows"][0]["auc"] is None
    code, out = _run("--spool", spool)
    assert code == 0, out
    text = " ".join(out.split())
    assert f"evaluator rm ({VERSION}): 80 scored, no thumbs or ratings on them yet" in text
    assert "no human labels (thumbs or ratings) on any scored answer" in text
    assert "AUC" not in out.splitlines()[0]  # no empty table


def test_no_evaluations_at_all(tmp_path: Path) -> None:
    thumbs_only = [e for e in _drifting(days=1) if e["type"] == "feedback"]
    spool = _spool(tmp_path, thumbs_only)
    assert _json("--spool", str(spool))["evaluators"] == []
    code, out = _run("--spool", str(spool))
    assert code == 0, out
    assert " ".join(out.split()) == f"no evaluation events in spool {spool}"


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out = _run("--spool", str(tmp_path / "nowhere"))
    assert code == 1
    assert "no spool directory at" in out
    code, out = _run("--spool", str(tmp_path), "--window", "soon")
    assert code == 2
    assert "neither a window" in out
    assert parse_window("6h") == 21600.0
    assert parse_window("all") is None
    with pytest.raises(typer.BadParameter):
        parse_window("0d")


@pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning",
    "ignore:open_text is deprecated:DeprecationWarning",
)
def test_kafka_gives_what_the_spool_gives(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    events = _drifting()
    admin = KafkaAdminClient(bootstrap_servers=[kafka_broker.bootstrap])
    try:
        admin.create_topics([NewTopic(t, 3, 1) for t in (EVALUATIONS_TOPIC, FEEDBACK_TOPIC)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=[kafka_broker.bootstrap], acks="all", linger_ms=0)
    try:
        for event in events:
            topic = EVALUATIONS_TOPIC if event["type"] == "evaluation" else FEEDBACK_TOPIC
            key = event["body"]["response_id"].encode()
            producer.send(topic, key=key, value=json.dumps(event).encode())
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)
    from_kafka = _json("--kafka", kafka_broker.bootstrap)
    from_spool = _json("--spool", str(_spool(tmp_path, events)))
    assert from_kafka["source"] == f"Kafka {kafka_broker.bootstrap}"
    assert from_kafka["evaluators"] == from_spool["evaluators"]
    assert [w["scored"] for w in from_kafka["evaluators"][0]["windows"]] == [80, 80, 80]
