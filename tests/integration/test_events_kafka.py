"""Events through real processes into a real broker: openai SDK -> `loopgate serve` -> sims,
and the gateway's Kafka sink -> tansu, read back with kafka-python.

Covers what tests/integration/test_faults_hardening.py does not: the events' content, keys,
flag and variant, schemas and topics, streamed answers, audit events, and an exact count
(once after dedupe by event_id, in order per key) across a broker killed under load.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from feedback.privacy import KeyReader, open_event
from feedback.privacy.file_store import FileKeyStore
from feedback.privacy.keys import KeyCache
from feedback.schema import AUDIT_TOPIC, COMPLETIONS_TOPIC, FEEDBACK_TOPIC, SCHEMA_DIR
from feedback.sinks.kafka_process import MODULE as PRODUCER_MODULE
from feedback.sinks.kafka_reader import end_offsets
from tests.support.gateway import GatewayServer, metric, poll, pool
from tests.support.kafka import TansuBroker, started_broker
from tests.support.ports import wait_until
from tests.support.sim import SimServer, start_sim

TOKEN = "events-admin-token"
FLAG = "support-bot"
MESSAGES: list[Any] = [{"role": "user", "content": "Where is my parcel? Mail me at a@b.example"}]
POOL_OF = {"control": "policy-a", "canary": "policy-b"}
SCHEMAS = {
    name: json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    for name in ("completion", "feedback", "audit")
}


def flag_doc(key: str) -> dict[str, Any]:
    """Two variants on two policy versions; `vip` is always on canary."""
    return {
        "key": key,
        "salt": f"ev-{key}",
        "control": "control",
        "variants": [
            {"name": "control", "pool": "policy-a", "weight": 50},
            {"name": "canary", "pool": "policy-b", "weight": 50},
        ],
        "rules": [{"kind": "allow_units", "units": ["vip"], "variant": "canary"}],
    }


def gateway_config(
    sims: dict[str, SimServer], folder: Path, broker: TansuBroker, **kafka: Any
) -> dict[str, Any]:
    """Both sims as pools, the flags from a file (admin API on), events to the broker."""
    flags_path = folder / f"flags-{uuid.uuid4().hex[:6]}.yaml"
    flags_path.write_text(yaml.safe_dump({"flags": [flag_doc(FLAG), flag_doc("audit-bot")]}))
    return {
        "pools": {name: pool(s.base_url, served_model=name) for name, s in sims.items()},
        "models": {name: {"pool": name} for name in sims},
        "balancer": {"probe_timeout_s": 5.0},  # a starved 2-core box is not an outage
        "flags": {"source": "file", "path": str(flags_path), "admin_token": TOKEN},
        "events": {
            "kafka": {"bootstrap_servers": [broker.bootstrap], "partitions": 3, **kafka},
            "spool": {"dir": str(folder / f"spool-{uuid.uuid4().hex[:6]}")},
        },
    }


# -- reading the broker -------------------------------------------------------------------


def _kafka() -> Any:
    from feedback.sinks.kafka import load_kafka_client

    load_kafka_client()
    import kafka

    return kafka


def group_read(
    bootstrap: str, topics: list[str], done: Callable[[list[Any]], bool], timeout: float = 30
) -> list[Any]:
    """A consumer in a fresh group, as an app would run one: records until `done` says so."""
    consumer = _kafka().KafkaConsumer(
        bootstrap_servers=[bootstrap],
        group_id=f"it-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    consumer.subscribe(topics)
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        # Wait for the assignment: a consumer closed mid-join leaves tansu's group stuck.
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        consumer.seek_to_beginning()
        while not done(records) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def read_all(bootstrap: str, topics: list[str]) -> list[Any]:
    """Every record now on the broker (assigned partitions, no group), up to the exact end."""
    kafka = _kafka()
    consumer = kafka.KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    try:
        parts = [kafka.TopicPartition(t, p) for t in topics
                 for p in sorted(consumer.partitions_for_topic(t) or ())]  # fmt: skip
        if not parts:
            return []
        ends = end_offsets(consumer, parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(p) < ends[p] for p in parts):
            assert time.monotonic() < deadline, "could not read up to the end offsets"
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def _event(record: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(record.value)
    return event


def _keys(gateway: GatewayServer) -> KeyReader:
    """The gateway's content keys: the file store beside its spool (the default)."""
    spool = yaml.safe_load(gateway.config_path.read_text())["events"]["spool"]["dir"]
    return FileKeyStore(Path(spool).parent / "keys", KeyCache(1000, 60))


# -- one gateway, one broker, two policy versions for the content tests -------------------


# One in-memory tansu broker for the module's content tests.
broker = pytest.fixture(started_broker, scope="module", name="broker")


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SimServer]]:
    """Two policy versions: pool name -> simulator."""
    folder = tmp_path_factory.mktemp("sims")
    started: list[SimServer] = []
    try:
        for name in POOL_OF.values():
            started.append(start_sim(folder, model=name, output_tokens=12))
        yield {server.model: server for server in started}
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def gateway(
    module_gateway_factory: Callable[..., GatewayServer],
    sims: dict[str, SimServer],
    broker: TansuBroker,
    tmp_path_factory: pytest.TempPathFactory,
) -> GatewayServer:
    """The gateway under test, with events on the module's broker."""
    return module_gateway_factory(gateway_config(sims, tmp_path_factory.mktemp("gw"), broker))


def test_answer_and_feedback_reach_their_topics_keyed_with_flag_and_variant(
    gateway: GatewayServer, broker: TansuBroker
) -> None:
    client = gateway.client()
    answers: dict[str, tuple[str, str]] = {}  # response id -> (variant header, text)
    for user in ("vip", "someone-else"):
        raw = client.chat.completions.with_raw_response.create(
            model=FLAG, messages=MESSAGES, user=user, max_tokens=12
        )
        answer = raw.parse()
        assert raw.headers["x-loopgate-flag"] == FLAG
        text = answer.choices[0].message.content
        assert text
        answers[answer.id] = (raw.headers["x-loopgate-variant"], text)
    vip_id = next(iter(answers))
    assert answers[vip_id][0] == "canary"  # the allow rule, so the variant is known
    feedback_ids = {}
    for response_id in answers:
        for body in ({"kind": "thumbs_down"}, {"kind": "edit", "edited_text": "Try again."}):
            sent = httpx.post(
                gateway.v1 + "/feedback", json={"response_id": response_id, **body}, timeout=10
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()["variant"] == answers[response_id][0]
            feedback_ids[sent.json()["id"]] = (response_id, body["kind"])

    def complete(records: list[Any]) -> bool:
        ids = {_event(r)["event_id"] for r in records}
        keys = {r.key.decode() for r in records if r.topic == COMPLETIONS_TOPIC}
        return set(feedback_ids) <= ids and set(answers) <= keys

    records = group_read(broker.bootstrap, [COMPLETIONS_TOPIC, FEEDBACK_TOPIC], complete)
    assert complete(records), "not every event reached Kafka"
    ours = [r for r in records if r.key.decode() in answers]
    completions = [r for r in ours if r.topic == COMPLETIONS_TOPIC]
    assert sorted(r.key.decode() for r in completions) == sorted(answers)  # one per answer
    keys = _keys(gateway)
    for record in ours:
        event = _event(record)
        jsonschema.validate(event, SCHEMAS[event["type"]])  # as sealed on the wire
        event = open_event(event, keys)
        body = event["body"]
        variant, text = answers[body["response_id"]]
        assert record.key.decode() == body["response_id"]
        assert (body["flag"], body["variant"], body["app"]) == (FLAG, variant, "default")
        if event["type"] == "completion":
            assert body["model_served"] == POOL_OF[variant]
            assert body["response"]["text"] == text
            assert "a@b.example" not in record.value.decode()  # redacted before it left
        else:
            assert (body["response_id"], body["kind"]) == feedback_ids[event["event_id"]]
    # Feedback on one answer: one partition, in the order it was given.
    for response_id in answers:
        mine = sorted((r.partition, r.offset, _event(r)["body"]["kind"]) for r in ours
                      if r.topic == FEEDBACK_TOPIC and r.key.decode() == response_id)  # fmt: skip
        assert len({p for p, _, _ in mine}) == 1
        assert [kind for *_, kind in mine] == ["thumbs_down", "edit"]


def test_streamed_answer_event_carries_the_streamed_text_and_usage(
    gateway: GatewayServer, broker: TansuBroker
) -> None:
    stream = gateway.client().chat.completions.create(
        model=FLAG,
        messages=MESSAGES,
        user="vip",
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, response_id = [], None, ""
    for chunk in stream:
        response_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert usage is not None
    records = group_read(
        broker.bootstrap,
        [COMPLETIONS_TOPIC],
        lambda rs: any(r.key.decode() == response_id for r in rs),
    )
    (record,) = [r for r in records if r.key.decode() == response_id]
    event = _event(record)
    jsonschema.validate(event, SCHEMAS["completion"])
    body = open_event(event, _keys(gateway))["body"]
    assert body["stream"] is True
    assert body["response"]["text"] == "".join(parts)
    assert body["usage"]["prompt_tokens"] == usage.prompt_tokens
    assert body["usage"]["completion_tokens"] == usage.completion_tokens
    assert body["ttft_ms"] is not None
    assert (body["variant"], body["status"]) == ("canary", "ok")


def test_flag_change_through_the_admin_api_writes_an_audit_event(
    gateway: GatewayServer, broker: TansuBroker
) -> None:
    killed = httpx.post(
        gateway.base_url + "/admin/flags/audit-bot/kill",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Loopgate-Actor": "it-tester"},
        timeout=10,
    )
    assert killed.status_code == 200, killed.text

    def changed(records: list[Any]) -> bool:
        return any(r.key == b"audit-bot" for r in records)

    records = group_read(broker.bootstrap, [AUDIT_TOPIC], changed)
    (record,) = [r for r in records if r.key == b"audit-bot"]
    event = _event(record)
    jsonschema.validate(event, SCHEMAS["audit"])
    assert event["type"] == "flag_change"
    body = event["body"]
    assert body["what"] == "audit-bot"
    assert "it-tester" in body["who"]
    assert body["before"]["killed"] is False
    assert body["after"]["killed"] is True
    assert body["version"] == body["before"]["version"] + 1


# -- the broker killed under load -----------------------------------------------------------


def test_broker_killed_under_load_every_event_once_in_order(
    gateway_factory: Callable[..., GatewayServer],
    sims: dict[str, SimServer],
    restartable_kafka: TansuBroker,
    tmp_path: Path,
) -> None:
    """A few hundred requests and feedback; the broker is killed a third of the way in.

    The in-memory broker forgets what it had acknowledged, so what it held is read just
    before the kill: the gateway is paused (SIGSTOP, its requests queue in the kernel) while
    a reader catches up with the broker's end offsets, then the broker dies and the gateway
    goes on. Old broker + restarted broker must hold every accepted event exactly once after
    dedupe by event_id, each answer's feedback in the order it was given.
    """
    broker = restartable_kafka
    config = gateway_config(
        sims, tmp_path, broker, send_timeout_s=2, connect_timeout_s=1, retry_backoff_max_s=1
    )
    gw = gateway_factory(config)
    topics = [COMPLETIONS_TOPIC, FEEDBACK_TOPIC]
    answers, workers = 120, 6
    done: list[tuple[str, list[str]]] = []  # (response id, feedback event ids in order)
    statuses: list[int] = []
    before_kill: list[Any] = []
    a_third = asyncio.Event()
    progress: list[int] = []  # answers done when the broker died, and when it came back

    async def user(client: httpx.AsyncClient, index: int) -> None:
        for n in range(index, answers, workers):
            chat = await client.post(
                "/chat/completions",
                json={"model": FLAG, "messages": MESSAGES, "user": f"u{n}", "max_tokens": 8},
            )
            statuses.append(chat.status_code)
            if chat.status_code != 200:
                continue
            response_id, given = chat.json()["id"], []
            for body in ({"kind": "thumbs_down"}, {"kind": "edit", "edited_text": f"fix {n}"}):
                sent = await client.post("/feedback", json={"response_id": response_id, **body})
                statuses.append(sent.status_code)
                if sent.status_code == 200:
                    given.append(sent.json()["id"])
            done.append((response_id, given))
            if len(done) >= answers // 3:
                a_third.set()
            await asyncio.sleep(0.3)  # paced (~20 answers/s) so the load spans the outage

    async def fault() -> None:
        await a_third.wait()
        os.kill(gw.proc.pid, signal.SIGSTOP)
        try:
            before_kill.extend(await asyncio.to_thread(read_all, broker.bootstrap, topics))
            await asyncio.to_thread(broker.kill)
        finally:
            os.kill(gw.proc.pid, signal.SIGCONT)
        progress.append(len(done))
        await asyncio.sleep(3.0)  # past send_timeout_s: sends fail, events go to the spool
        progress.append(len(done))
        await asyncio.to_thread(broker.start)

    async def load() -> None:
        async with httpx.AsyncClient(base_url=gw.v1, timeout=60) as client:
            await asyncio.gather(fault(), *(user(client, i) for i in range(workers)))

    # The first answer creates the topics the pre-kill reader looks at.
    first = httpx.post(gw.v1 + "/chat/completions", json={"model": FLAG, "messages": MESSAGES})
    assert first.status_code == 200
    asyncio.run(load())
    assert statuses == [200] * (answers * 3)  # the gateway answered every request meanwhile
    assert len(before_kill) > 0
    assert progress[0] < progress[1] < answers, progress  # load ran across the outage
    wait_until(
        lambda: (
            metric(gw, "loopgate_spool_pending_bytes") == 0
            and metric(gw, "loopgate_events_queue_depth") == 0
            and metric(gw, "loopgate_events_spooled_total") > 0
        ),
        60,
        "spool replayed",
        interval=0.5,
    )
    assert metric(gw, "loopgate_events_dropped_total") == 0
    after = read_all(broker.bootstrap, topics)

    first_seen: dict[str, tuple[int, int, int, dict[str, Any]]] = {}
    for epoch, records in enumerate((before_kill, after)):
        for record in records:
            event = _event(record)
            assert record.key.decode() == event["body"]["response_id"]
            position = (epoch, record.partition, record.offset, event)
            first_seen.setdefault(event["event_id"], position)
    completions: dict[str, list[str]] = {}
    for event_id, (*_, event) in first_seen.items():
        if event["type"] == "completion":
            completions.setdefault(event["body"]["response_id"], []).append(event_id)
    expected_ids = {first.json()["id"]} | {response_id for response_id, _ in done}
    assert set(completions) == expected_ids, "completions lost or foreign"
    assert all(len(ids) == 1 for ids in completions.values()), "one answer, two completions"
    feedback = {eid for eid, (*_, e) in first_seen.items() if e["type"] == "feedback"}
    given = [ids for _, ids in done]
    assert feedback == {eid for ids in given for eid in ids}, "feedback lost or invented"
    for ids in given:  # in order per key: thumbs_down before edit
        assert first_seen[ids[0]][:3] < first_seen[ids[1]][:3]
    assert any(epoch == 1 for epoch, *_ in first_seen.values())  # the outage was crossed


# -- an event over Kafka's record size limit, and the records' headers ----------------------


def _series(gw: GatewayServer, name: str, labels: str) -> float:
    status, text = gw.get("/metrics")
    assert status == 200
    for line in text.decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not exported")


def test_an_oversized_event_is_cut_to_fit_and_records_carry_headers(
    gateway: GatewayServer, broker: TansuBroker
) -> None:
    """A 1.5 MB question under the 4 MiB body limit makes a completion event over 1 MiB."""
    trace = uuid.uuid4().hex
    big = httpx.post(
        gateway.v1 + "/chat/completions",
        json={"model": FLAG, "messages": [{"role": "user", "content": "word " * 300_000}],
              "user": "vip", "max_tokens": 4},
        headers={"traceparent": f"00-{trace}-{'1' * 16}-01"},
        timeout=120,
    )  # fmt: skip
    assert big.status_code == 400  # the simulator refuses it, as vLLM would: still an event
    after = gateway.client().chat.completions.create(model=FLAG, messages=MESSAGES, user="vip")

    def traced(record: Any) -> bool:
        return dict(record.headers).get("traceparent", b"").startswith(f"00-{trace}-".encode())

    def arrived(records: list[Any]) -> bool:
        return any(map(traced, records)) and any(r.key.decode() == after.id for r in records)

    records = group_read(broker.bootstrap, [COMPLETIONS_TOPIC], arrived, timeout=60)
    assert arrived(records), "the oversized event, or one behind it, did not reach Kafka"
    (record,) = [r for r in records if traced(r)]
    assert len(record.value) <= 1024 * 1024
    event = _event(record)
    jsonschema.validate(event, SCHEMAS["completion"])
    assert event["body"]["status"] == "error"
    # Content is sealed by default (docs/privacy.md): cut before sealing, as it can't be after.
    assert event["body"]["sealed"] is not None
    event = open_event(event, _keys(gateway))
    content = event["body"]["request"]["messages"][0]["content"]
    assert content.startswith("word word")
    assert content.endswith("[truncated by loopgate: 1500000 bytes]")
    # Headers: consumers route and trace without parsing the body.
    headers = dict(record.headers)
    assert headers["content-type"] == b"application/json"
    assert headers["loopgate-event-type"] == b"completion"
    assert headers["loopgate-schema-version"] == b"1"
    assert headers["loopgate-event-id"] == event["event_id"].encode()
    assert headers["traceparent"].decode().startswith(f"00-{trace}-")
    assert "loopgate-truncated" not in headers  # the sink had nothing left to cut
    topic = f'topic="{COMPLETIONS_TOPIC}"'
    assert _series(gateway, "loopgate_events_truncated_total", topic) == 1
    reason = f'reason="too_large",topic="{COMPLETIONS_TOPIC}"'
    assert _series(gateway, "loopgate_events_dead_lettered_total", reason) == 0
    assert metric(gateway, "loopgate_events_dropped_total") == 0


def _producer_children(gw: GatewayServer) -> list[int]:
    """The Kafka producer children of a gateway process (python -P -m <MODULE>)."""
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if PRODUCER_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    ]


def test_a_killed_producer_child_is_replaced_counted_and_loses_nothing(
    gateway_factory: Callable[..., GatewayServer],
    sims: dict[str, SimServer],
    broker: TansuBroker,
    tmp_path: Path,
) -> None:
    """What an SRE sees when the producer child dies: the next one takes over, nothing is
    lost, and loopgate_events_producer_restarts_total says it happened."""
    gw = gateway_factory(gateway_config(sims, tmp_path, broker))
    client = gw.client()

    def chat(count: int) -> list[str]:
        return [
            client.chat.completions.create(
                model=FLAG, messages=MESSAGES, user=f"u{n}", max_tokens=4
            ).id
            for n in range(count)
        ]

    poll(lambda: len(_producer_children(gw)) == 1, 30, "the producer child")
    first = _producer_children(gw)[0]
    ids = chat(5)
    poll(lambda: metric(gw, "loopgate_events_sent_total") >= 5, 30, "the first events sent")
    assert metric(gw, "loopgate_events_producer_restarts_total") == 0
    os.kill(first, signal.SIGKILL)
    ids += chat(5)
    poll(lambda: metric(gw, "loopgate_events_producer_restarts_total") == 1, 60, "a restart")
    poll(
        lambda: (
            metric(gw, "loopgate_events_sent_total") + metric(gw, "loopgate_events_replayed_total")
            >= 10
        ),
        60,
        "every event sent or replayed",
    )
    assert _producer_children(gw) not in ([], [first])
    assert metric(gw, "loopgate_events_dropped_total") == 0
    in_topic = {r.key.decode() for r in read_all(broker.bootstrap, [COMPLETIONS_TOPIC])}
    assert set(ids) <= in_topic
