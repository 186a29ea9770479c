"""Evaluation events through the pipeline: to the spool, and to Kafka on their own topic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import orjson

from feedback.config import EventsConfig, SpoolConfig
from feedback.emitter import open_pipeline
from feedback.schema import EVALUATIONS_TOPIC, SCHEMA_DIR
from tests.support.kafka import TansuBroker, consume_all
from tests.unit.feedback.events import completion, evaluation
from tests.unit.feedback.test_pipeline import until
from tests.unit.feedback.test_pipeline_kafka import kafka_config

SCHEMA = json.loads((SCHEMA_DIR / "evaluation.json").read_text())


def test_evaluations_go_to_the_spool_valid_with_the_reason_redacted(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = EventsConfig(spool=SpoolConfig(dir=tmp_path / "spool"))
        async with open_pipeline(cfg, "gw") as pipeline:
            pipeline.emit(completion("lg1.a.m"))
            pipeline.emit(evaluation("lg1.a.m", reason="quotes bob@example.com back"))

    asyncio.run(main())
    lines = b"".join(p.read_bytes() for p in (tmp_path / "spool" / "gw").glob("*.jsonl"))
    events = [orjson.loads(line) for line in lines.splitlines()]
    scored = [e for e in events if e["type"] == "evaluation"]
    assert len(scored) == 1
    jsonschema.validate(scored[0], SCHEMA)
    assert scored[0]["body"]["response_id"] == "lg1.a.m"  # ids are not content
    assert "bob@example.com" not in scored[0]["body"]["reason"]


def test_evaluations_reach_kafka_on_their_topic_keyed_by_response_id(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    sent = [evaluation(f"lg1.r{i}.m", score=float(i % 5 + 1)) for i in range(20)]

    async def main() -> None:
        async with open_pipeline(kafka_config(tmp_path, kafka_broker), "gw") as pipeline:
            for event in sent:
                pipeline.emit(event)
            await until(lambda: pipeline.stats.sent == len(sent), within=30)
        assert pipeline.stats.spooled == 0

    asyncio.run(main())
    records = consume_all(kafka_broker.bootstrap, [EVALUATIONS_TOPIC], len(sent))
    assert len(records) == len(sent)
    for record in records:
        event = orjson.loads(record.value)
        assert record.topic == EVALUATIONS_TOPIC
        assert record.key.decode() == event["body"]["response_id"]
        jsonschema.validate(event, SCHEMA)
