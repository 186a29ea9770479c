"""Online evaluators through real processes: a gateway, a policy sim, a reward-model sim, a judge.

Sampled answers get exactly one evaluation event per evaluator; nothing else is scored; a dead
or stalled evaluator pool changes nothing for requests, and is counted.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from feedback.schema import SCHEMA_DIR
from feedback.sinks.spool import SEGMENT_SUFFIX
from gateway.config import EvaluatorConfig
from gateway.rubric import sampled, version
from gateway.settings import Settings
from tests.support.gateway import GatewayServer, pool
from tests.support.ports import wait_until
from tests.support.sim import SimServer
from tests.unit.observability.live import running

MESSAGES: list[Any] = [
    {"role": "user", "content": "How do I rotate API keys safely? Mail ops@example.com"}
]
SCHEMA = json.loads((SCHEMA_DIR / "evaluation.json").read_text())


def _events(spool: Path) -> list[dict[str, Any]]:
    lines: list[bytes] = []
    for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")):
        lines.extend(line for line in path.read_bytes().splitlines() if line.strip())
    return [json.loads(line) for line in lines]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _ask(gw: GatewayServer, count: int) -> tuple[list[str], list[str]]:
    """`count` answers (every third streamed) and two with consent none: (scorable, opted out)."""
    client = gw.client()
    scorable: list[str] = []
    for i in range(count):
        if i % 3 == 0:
            chunks = list(
                client.chat.completions.create(
                    model="assistant", messages=MESSAGES, user=f"u{i}", stream=True
                )
            )
            scorable.append(chunks[0].id)
        else:
            answer = client.chat.completions.create(
                model="assistant", messages=MESSAGES, user=f"u{i}"
            )
            scorable.append(answer.id)
    opted_out = [
        client.chat.completions.create(
            model="assistant",
            messages=MESSAGES,
            user=f"private{i}",
            extra_headers={"X-Loopgate-Consent": "none"},
        ).id
        for i in range(2)
    ]
    return scorable, opted_out


def test_sampled_answers_get_exactly_one_evaluation_each(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    policy = sim_factory(model="policy-a", style="friendly", ttft=0.0, itl=0.0)
    rm = sim_factory(model="rm", reward_term=["!=0.5"], ttft=0.0)
    judge = sim_factory(model="judge-model", ttft=0.0, itl=0.0)
    spool = tmp_path / "spool"
    evaluators = {
        "reward": {"kind": "reward_model", "pool": "rm", "sample_rate": 0.5},
        "helpfulness": {"kind": "judge", "pool": "judge", "sample_rate": 1.0},
        "elsewhere": {"kind": "judge", "pool": "judge", "sample_rate": 1.0, "flags": ["other"]},
    }
    config = {
        "instance": "eval-test",
        "pools": {
            "a": pool(policy.base_url, served_model="policy-a"),
            "rm": pool(rm.base_url, served_model="rm"),
            "judge": pool(judge.base_url, served_model="judge-model"),
        },
        "models": {"assistant": {"pool": "a"}},
        "events": {"spool": {"dir": str(spool)}},
        "evaluators": evaluators,
    }
    gw = gateway_factory(config)
    scorable, opted_out = _ask(gw, 24)
    assert len(set(scorable)) == 24
    assert gw.stop() == 0  # drains pending scores, then the event pipeline

    scored = [e for e in _events(spool) if e["type"] == "evaluation"]
    for event in scored:
        jsonschema.validate(event, SCHEMA)
    by_evaluator: dict[str, list[str]] = {}
    for event in scored:
        by_evaluator.setdefault(event["body"]["evaluator"], []).append(event["body"]["response_id"])
    want_reward = sorted(r for r in scorable if sampled("reward", r, 0.5))
    assert 4 <= len(want_reward) <= 20  # the hash sample is a real sample
    assert sorted(by_evaluator["reward"]) == want_reward
    assert sorted(by_evaluator["helpfulness"]) == sorted(scorable)
    assert "elsewhere" not in by_evaluator
    assert not set(opted_out) & {e["body"]["response_id"] for e in scored}
    # The evaluator pools saw one call per score, nothing more.
    assert rm.stats()["completed"] == len(want_reward)
    assert judge.stats()["completed"] == len(scorable)

    judged = [e["body"] for e in scored if e["body"]["evaluator"] == "helpfulness"]
    assert {b["score"] for b in judged} <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert all(b["flag"] == "assistant" and b["evaluator_kind"] == "judge" for b in judged)
    judge_cfg = EvaluatorConfig.model_validate(evaluators["helpfulness"])
    assert {b["version"] for b in judged} == {version(judge_cfg, "judge-model")}
    # The judge saw the conversation as the policy did (events are redacted on their own
    # copy), and each verdict's reason reached the event.
    for entry in judge.requests():
        content = entry["body"]["messages"][0]["content"]
        assert "user: How do I rotate API keys safely? Mail ops@example.com" in content
    assert all(b["reason"].startswith("simulated judge") for b in judged)
    rewards = [e["body"] for e in scored if e["body"]["evaluator"] == "reward"]
    # Friendly answers carry "!": the reward terms lift them above the bare noise in [-1, 1].
    assert sum(b["score"] for b in rewards) / len(rewards) > 0.5


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("fault", ["dead", "stalled"])
def test_a_dead_or_stalled_evaluator_changes_nothing_for_requests(
    fault: str,
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    policy = sim_factory(model="policy-a", ttft=0.0, itl=0.0)
    if fault == "dead":
        url = f"http://127.0.0.1:{_dead_port()}"
    else:
        url = sim_factory(model="rm", stall_rate=1.0).base_url
    spool = tmp_path / "spool"
    config = {
        "pools": {
            "a": pool(policy.base_url, served_model="policy-a"),
            "rm": pool(url, served_model="rm"),
        },
        "models": {"assistant": {"pool": "a"}},
        "events": {"spool": {"dir": str(spool)}},
        "evaluators": {
            "reward": {
                "kind": "reward_model",
                "pool": "rm",
                "sample_rate": 1.0,
                "concurrency": 2,
                "queue_size": 4,
                "timeout_s": 0.5,
            }
        },
    }
    gw = gateway_factory(config)
    scorable, _ = _ask(gw, 12)
    assert len(scorable) == 12  # every request answered (the SDK raises otherwise)

    def outcomes() -> dict[str, float]:
        metrics = gw.get("/metrics")[1].decode()
        name = "loopgate_evaluations_total"
        return {
            o: _metric(metrics, name, evaluator="reward", outcome=o)
            for o in ("done", "failed", "dropped")
        }

    # Every picked answer is accounted for, as failed (refused, timed out) or dropped (queue).
    wait_until(lambda: sum(outcomes().values()) == 12, 20, "evaluations accounted for")
    counted = outcomes()
    assert counted["done"] == 0
    assert counted["failed"] >= 1
    assert gw.stop() == 0
    assert [e for e in _events(spool) if e["type"] == "evaluation"] == []
    completions = [e for e in _events(spool) if e["type"] == "completion"]
    assert len(completions) == 14
    assert all(e["body"]["status"] == "ok" for e in completions)


def test_pending_scores_finish_at_shutdown(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    policy = sim_factory(model="policy-a", ttft=0.0, itl=0.0)
    slow = sim_factory(model="rm", ttft=0.6, jitter=0.0)  # each score takes 0.6 s
    spool = tmp_path / "spool"
    config = {
        "pools": {
            "a": pool(policy.base_url, served_model="policy-a"),
            "rm": pool(slow.base_url, served_model="rm"),
        },
        "models": {"assistant": {"pool": "a"}},
        "events": {"spool": {"dir": str(spool)}},
        "evaluators": {
            "reward": {
                "kind": "reward_model",
                "pool": "rm",
                "sample_rate": 1.0,
                "concurrency": 1,
                "timeout_s": 5.0,
            },
        },
    }
    gw = gateway_factory(config)
    scorable, _ = _ask(gw, 3)
    assert gw.stop() == 0  # at once: the three scores are still queued or running
    scored = [e["body"]["response_id"] for e in _events(spool) if e["type"] == "evaluation"]
    assert sorted(scored) == sorted(scorable)


def test_each_score_is_a_gen_ai_evaluation_result_on_the_answers_trace(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    policy = sim_factory(model="policy-a", ttft=0.0, itl=0.0)
    judge = sim_factory(model="judge-model", ttft=0.0, itl=0.0)
    settings = Settings(
        pools={
            "a": {"endpoints": [policy.base_url], "served_model": "policy-a"},
            "judge": {"endpoints": [judge.base_url], "served_model": "judge-model"},
        },
        models={"assistant": {"pool": "a"}},
        events={"spool": {"dir": str(tmp_path / "spool")}},
        evaluators={"helpfulness": {"kind": "judge", "pool": "judge", "sample_rate": 1.0}},
    )  # type: ignore[arg-type]
    exporter = InMemorySpanExporter()

    async def go() -> str:
        async with running(settings, exporter) as (app, client):
            answer = await client.post(
                "/v1/chat/completions", json={"model": "assistant", "messages": MESSAGES}
            )
            assert answer.status_code == 200
            done = app.state.runtime.evaluators.metrics.outcomes.labels("helpfulness", "done", "")
            async with asyncio.timeout(20):
                while done._value.get() < 1:  # noqa: ASYNC110 - a counter, not an event
                    await asyncio.sleep(0.02)
            response_id: str = answer.json()["id"]
            return response_id

    response_id = asyncio.run(go())
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "evaluate helpfulness"]
    answer_span = next(s for s in exporter.get_finished_spans() if s.name == "chat assistant")
    assert span.parent is not None
    assert span.parent.span_id == answer_span.context.span_id
    (event,) = span.events
    assert event.name == "gen_ai.evaluation.result"
    attrs = dict(event.attributes or {})
    assert attrs["gen_ai.evaluation.name"] == "helpfulness"
    assert attrs["gen_ai.response.id"] == response_id
    assert attrs["gen_ai.evaluation.score.value"] in {1.0, 2.0, 3.0, 4.0, 5.0}
    assert str(attrs["gen_ai.evaluation.explanation"]).startswith("simulated judge")
    assert "gen_ai.evaluation.score.label" not in attrs
