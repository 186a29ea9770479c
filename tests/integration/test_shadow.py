"""Shadow traffic through real processes: openai SDK -> `loopgate serve` (file flags) -> sims.

The control variant's pool and the shadow variant's pool are separate simulators, so what the
shadow pool received is counted from the simulator itself (the mirrored calls, not the config);
the completion events are read back from the gateway's spool once it has stopped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from feedback.schema import FeedbackBody
from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.settings import Settings
from router.evaluate import evaluate
from router.model import EvalContext, parse_flag
from router.shadow import shadow_for
from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, pool
from tests.support.ports import free_port, wait_until
from tests.support.sim import SimServer
from tests.unit.observability.live import running

MESSAGES: list[Any] = [{"role": "user", "content": "Where is my parcel?"}]


def flag_doc(key: str, shadow: dict[str, Any], shadow_pool: str = "candidate") -> dict[str, Any]:
    """All traffic on `control`; `candidate` (weight 0) is the shadow variant."""
    return {
        "key": key,
        "salt": f"it-{key}",
        "control": "control",
        "variants": [
            {"name": "control", "pool": "control", "weight": 100},
            {"name": "candidate", "pool": shadow_pool, "weight": 0},
        ],
        "shadow": {"variant": "candidate", **shadow},
    }


def start(
    gateway_factory: Callable[..., GatewayServer],
    tmp_path: Path,
    pools: dict[str, str],
    flags: list[dict[str, Any]],
    **extra: Any,
) -> tuple[GatewayServer, Path]:
    """A gateway with these pools (name -> url, served model = name) and flags; its spool."""
    flags_path = tmp_path / "flags.yaml"
    flags_path.write_text(yaml.safe_dump({"flags": flags}, sort_keys=False))
    spool = tmp_path / "spool"
    config = {
        "pools": {name: pool(url, served_model=name) for name, url in pools.items()},
        "flags": {"source": "file", "path": str(flags_path)},
        "events": {"spool": {"dir": str(spool)}},
        "balancer": {"probe_timeout_s": 5.0},
        **extra,
    }
    return gateway_factory(config), spool


def users(prefix: str, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}-{tag}-{i}" for i in range(count)]


def metric(gw: GatewayServer, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    status, body = gw.get("/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def received_users(sim: SimServer) -> list[str]:
    """The `user` of every request the simulator received, in order."""
    return [str((e.get("body") or {}).get("user")) for e in sim.requests()]


def claims(response_id: str) -> dict[str, Any]:
    """The (unverified) claims of a Loopgate response id: lg1.<payload>.<mac>."""
    payload = response_id.split(".")[1]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    decoded: dict[str, Any] = json.loads(raw)
    return decoded


def completions(spool: Path) -> list[dict[str, Any]]:
    return [e["body"] for e in spooled_events(spool) if e["type"] == "completion"]


def test_every_picked_request_is_mirrored_exactly_once_and_paired(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    control = sim_factory(model="control", history=4096)
    candidate = sim_factory(model="candidate", style="friendly", history=4096)
    part_doc = flag_doc("part-bot", {"share": 0.3})
    gw, spool = start(
        gateway_factory,
        tmp_path,
        {"control": control.base_url, "candidate": candidate.base_url},
        [
            flag_doc("all-bot", {"share": 1.0}),
            part_doc,
            flag_doc("stream-bot", {"share": 1.0, "stream": True}),
        ],
    )
    client = gw.client()
    everyone, some, streamed = users("all", 8), users("part", 40), users("stream", 4)
    primary_ids: dict[str, str] = {}
    for user in everyone:
        answer = client.chat.completions.create(
            model="all-bot", messages=MESSAGES, user=user, max_tokens=8
        )
        primary_ids[user] = answer.id
    for user in some:
        answer = client.chat.completions.create(
            model="part-bot", messages=MESSAGES, user=user, max_tokens=8
        )
        primary_ids[user] = answer.id
    for user in streamed:  # the primary is not streamed; the shadow is
        answer = client.chat.completions.create(
            model="stream-bot", messages=MESSAGES, user=user, max_tokens=8
        )
        primary_ids[user] = answer.id
    opted_out = users("private", 3)
    for user in opted_out:
        client.chat.completions.create(
            model="all-bot",
            messages=MESSAGES,
            user=user,
            max_tokens=8,
            extra_headers={"X-Loopgate-Consent": "none"},
        )

    # The sticky sample, as the pure router computes it.
    part_flag = parse_flag(part_doc)

    def mirrored_unit(unit: str) -> bool:
        ctx = EvalContext(unit_id=unit, app_id="anonymous", model="part-bot")
        return shadow_for(part_flag, evaluate(part_flag, ctx), unit) is not None

    picked = {u for u in some if mirrored_unit(u)}
    assert 3 <= len(picked) <= 25, "a share of 0.3 of 40 units is a real sample"
    expected = set(everyone) | picked | set(streamed)

    wait_until(
        lambda: metric(gw, "loopgate_requests_total", role="shadow") >= len(expected),
        15,
        "every shadow recorded",
    )
    time.sleep(0.3)  # nothing more arrives
    # The shadow pool received exactly one call per picked request, nothing for the others.
    mirrored = received_users(candidate)
    assert sorted(mirrored) == sorted(expected)
    for entry in candidate.requests():
        assert entry["body"]["model"] == "candidate"
        assert entry["body"]["messages"] == MESSAGES
    # Every primary went to the control pool, once.
    assert sorted(received_users(control)) == sorted([*primary_ids, *opted_out])

    assert metric(gw, "loopgate_requests_total", role="primary") == len(primary_ids) + 3
    assert metric(gw, "loopgate_requests_total", role="shadow", flag="all-bot") == 8
    assert metric(gw, "loopgate_requests_total", role="shadow", variant="control") == 0
    assert metric(gw, "loopgate_tokens_total", role="shadow", direction="output") > 0
    assert metric(gw, "loopgate_time_to_first_token_seconds_count", role="shadow") == 4
    assert metric(gw, "loopgate_shadow_dropped_total", flag="all-bot", reason="consent") == 3
    assert metric(gw, "loopgate_shadow_dropped_total", flag="part-bot", reason="budget") == 0
    assert gw.stop() == 0

    events = completions(spool)
    shadows = [e for e in events if e["role"] == "shadow"]
    primaries = {e["response_id"]: e for e in events if e["role"] == "primary"}
    assert len(primaries) == len(primary_ids) + 3
    assert len(shadows) == len(expected)
    paired = set()
    for shadow in shadows:
        primary = primaries[shadow["pair_of"]]
        paired.add(shadow["pair_of"])
        assert (shadow["variant"], primary["variant"]) == ("candidate", "control")
        assert (shadow["flag"], shadow["unit_hash"]) == (primary["flag"], primary["unit_hash"])
        # (Content itself may be left out by the pipeline when a unit key is slow to come.)
        assert shadow["status"] == "ok"
        assert shadow["response"] is not None
        assert shadow["usage"]["completion_tokens"] > 0
        assert shadow["model_served"] == "candidate"
        # Its own signed id, whose pair claim is the primary's nonce.
        assert shadow["response_id"] != primary["response_id"]
        assert claims(shadow["response_id"])["p"] == claims(primary["response_id"])["n"]
        assert "p" not in claims(primary["response_id"])
        if primary["flag"] == "stream-bot":
            assert shadow["stream"] is True
            assert shadow["ttft_ms"] is not None
        else:
            assert shadow["stream"] is False
    assert len(paired) == len(shadows)  # one shadow per primary
    want_shadowed = {primary_ids[u] for u in expected}
    assert {rid for rid, e in primaries.items() if e["shadowed"]} == want_shadowed


def test_slow_dead_or_saturated_shadows_change_nothing_for_the_primary(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    control = sim_factory(model="control", history=4096)
    slow = sim_factory(model="slow", ttft=10.0, history=4096)  # 10 s to the first token
    candidate = sim_factory(model="candidate", history=4096)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw, _ = start(
        gateway_factory,
        tmp_path,
        {
            "control": control.base_url,
            "slow": slow.base_url,
            "dead": dead,
            "candidate": candidate.base_url,
        },
        [
            flag_doc("slow-bot", {"share": 1.0, "timeout_s": 1.0}, "slow"),
            flag_doc("dead-bot", {"share": 1.0}, "dead"),
            flag_doc("cap-bot", {"share": 1.0, "max_in_flight": 2, "timeout_s": 30}, "slow"),
            # ~40 tokens a request (prompt bytes / 4 + max_tokens): two fit a budget of 100.
            flag_doc("budget-bot", {"share": 1.0, "tokens_per_minute": 100}),
        ],
    )
    client = gw.client()
    durations: dict[str, list[float]] = {}
    for key in ("slow-bot", "dead-bot", "cap-bot", "budget-bot"):
        for user in users(key, 6):
            began = time.perf_counter()
            answer = client.chat.completions.create(
                model=key, messages=MESSAGES, user=user, max_tokens=8
            )
            durations.setdefault(key, []).append(time.perf_counter() - began)
            assert answer.choices[0].message.content  # no primary fails
    # The primary never waits for its shadow: far below the slow pool's 10 s.
    assert max(max(d) for d in durations.values()) < 5.0, durations

    wait_until(
        lambda: metric(gw, "loopgate_shadow_dropped_total", flag="slow-bot", reason="timeout") == 6,
        10,
        "slow shadows timed out",
    )
    dropped = {
        (flag, reason): metric(gw, "loopgate_shadow_dropped_total", flag=flag, reason=reason)
        for flag in ("slow-bot", "dead-bot", "cap-bot", "budget-bot")
        for reason in ("in_flight", "budget", "pool_unavailable", "timeout", "error")
    }
    assert dropped[("dead-bot", "pool_unavailable")] == 6
    # Over the cap: dropped at once, never queued: the slow pool got the two in flight only.
    assert dropped[("cap-bot", "in_flight")] == 4
    assert dropped[("budget-bot", "budget")] == 4
    assert sum(dropped.values()) == 6 + 6 + 4 + 4, dropped
    assert metric(gw, "loopgate_requests_total", role="primary", status="200") == 24
    assert metric(gw, "loopgate_requests_total", role="shadow", flag="budget-bot") == 2
    time.sleep(1.0)
    cap_calls = [u for u in received_users(slow) if u.startswith("cap-bot")]
    assert len(cap_calls) == 2, cap_calls
    # The dead pool's failures do not move the primaries' traffic anywhere.
    assert metric(gw, "loopgate_fallbacks_total") == 0


def test_sigterm_under_load_completes_primaries_and_cancels_shadows(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    control = sim_factory(model="control", itl=0.05, output_tokens=30)  # ~1.5 s streams
    slow = sim_factory(model="slow", ttft=10.0)
    gw, spool = start(
        gateway_factory,
        tmp_path,
        {"control": control.base_url, "slow": slow.base_url},
        [flag_doc("load-bot", {"share": 1.0, "stream": True}, "slow")],
        server={"unready_seconds": 0.5, "drain_seconds": 20},
    )
    count = 6
    bodies: list[bytes] = [b""] * count
    errors: list[BaseException] = []
    started = threading.Barrier(count + 1, timeout=20)

    def stream(i: int) -> None:
        body = {"model": "load-bot", "messages": MESSAGES, "stream": True,
                "max_tokens": 30, "user": f"load-{i}"}  # fmt: skip
        try:
            with httpx.stream("POST", gw.v1 + "/chat/completions", json=body, timeout=30) as r:
                first = True
                for chunk in r.iter_bytes():
                    bodies[i] += chunk
                    if first:
                        first = False
                        started.wait()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    readers = [threading.Thread(target=stream, args=(i,)) for i in range(count)]
    for reader in readers:
        reader.start()
    started.wait()
    slow.wait_stats(received=count)
    gw.proc.send_signal(signal.SIGTERM)
    for reader in readers:
        reader.join(30)
    assert not errors, errors
    assert all(body.rstrip().endswith(b"data: [DONE]") for body in bodies)
    assert gw.proc.wait(30) == 0

    events = completions(spool)
    primaries = {e["response_id"]: e for e in events if e["role"] == "primary"}
    shadows = [e for e in events if e["role"] == "shadow"]
    assert len(primaries) == count
    assert all(e["status"] == "ok" and e["shadowed"] for e in primaries.values())
    # Every shadow was still waiting on the slow pool: cancelled after the primaries drained,
    # recorded as cancelled and paired with its primary.
    assert len(shadows) == count
    assert all(s["status"] == "cancelled" for s in shadows)
    assert {s["pair_of"] for s in shadows} == set(primaries)
    assert slow.wait_stats(cancelled=count)["completed"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_shadow_is_sent_once_to_one_endpoint_and_never_falls_back(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
    stream: bool,
) -> None:
    control = sim_factory(model="control", history=4096)
    failing = sim_factory(model="candidate", error_rate=1.0, history=4096)
    gw, _ = start(
        gateway_factory,
        tmp_path,
        {"control": control.base_url, "candidate": failing.base_url},
        [flag_doc("err-bot", {"share": 1.0, "stream": stream})],
    )
    client = gw.client()
    for user in users("err", 3):
        answer = client.chat.completions.create(
            model="err-bot", messages=MESSAGES, user=user, max_tokens=8
        )
        assert answer.choices[0].message.content
    wait_until(
        lambda: metric(gw, "loopgate_shadow_dropped_total", flag="err-bot", reason="error") == 3,
        10,
        "failed shadows counted",
    )
    assert len(failing.requests()) == 3  # once each: no retry
    assert len(control.requests()) == 3  # and no fallback to the control's pool
    assert metric(gw, "loopgate_requests_total", role="shadow", status="500") == 3


class FinishedLog:
    """An observer that keeps what it saw finish (as the evaluators and the console see it)."""

    reads_chunks = False

    def __init__(self) -> None:
        self.ended: list[tuple[str, str, str, str]] = []

    def started(self, ex: Exchange) -> None:
        pass

    def routed(self, ex: Exchange) -> None:
        pass

    def first_byte(self, ex: Exchange) -> None:
        pass

    def chunk(self, ex: Exchange, data: bytes) -> None:
        pass

    def finished(self, ex: Exchange) -> None:
        self.ended.append((ex.role, ex.response_id, ex.pair_of, ex.status))

    def feedback_received(self, body: FeedbackBody) -> None:
        pass


def test_observers_and_traces_see_the_pair_and_shutdown_counts_the_cancelled(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    """In process: the shadow's span links to the primary's; observers see the primary finish,
    then its shadow with pair_of; a shadow still running when the app stops is counted."""
    control = sim_factory(model="control")
    candidate = sim_factory(model="candidate")
    slow = sim_factory(model="slow", ttft=10.0)
    flags = tmp_path / "flags.yaml"
    flags.write_text(
        yaml.safe_dump(
            {
                "flags": [
                    flag_doc("bot", {"share": 1.0, "stream": True}),
                    flag_doc("slow-bot", {"share": 1.0}, "slow"),
                ]
            }
        )
    )
    settings = Settings(
        pools={
            "control": {"endpoints": [control.base_url], "served_model": "control"},
            "candidate": {"endpoints": [candidate.base_url], "served_model": "candidate"},
            "slow": {"endpoints": [slow.base_url], "served_model": "slow"},
        },
        flags={"source": "file", "path": str(flags)},
        events={"spool": {"dir": str(tmp_path / "spool")}},
        ids={"keys": ["k" * 40]},
    )
    exporter = InMemorySpanExporter()
    seen = FinishedLog()
    body = {"model": "bot", "messages": MESSAGES, "user": "u-1", "max_tokens": 8}

    async def go() -> tuple[str, Metrics]:
        async with running(settings, exporter, observers=[seen]) as (app, client):
            answer = await client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200
            runner = app.state.runtime.shadows
            for _ in range(200):
                if not runner.calls:
                    break
                await asyncio.sleep(0.02)
            slow_answer = await client.post(
                "/v1/chat/completions", json={**body, "model": "slow-bot"}
            )
            assert slow_answer.status_code == 200
            assert len(runner.calls) == 1  # still waiting on the slow pool when the app stops
            return str(answer.json()["id"]), app.state.runtime.metrics

    primary_id, metrics = asyncio.run(go())
    roles = [(role, pair_of == primary_id) for role, _, pair_of, _ in seen.ended[:2]]
    assert roles == [("primary", False), ("shadow", True)]
    assert seen.ended[0][1] == primary_id
    cancelled = seen.ended[-1]
    assert (cancelled[0], cancelled[3]) == ("shadow", "cancelled")
    assert metrics.shadow_dropped.labels("slow-bot", "shutdown")._value.get() == 1
    assert metrics.shadow_dropped.labels("bot", "shutdown")._value.get() == 0

    spans = exporter.get_finished_spans()
    (shadow_span,) = [
        s
        for s in spans
        if s.attributes
        and s.attributes.get("loopgate.role") == "shadow"
        and s.attributes.get("gen_ai.response.id") == seen.ended[1][1]
    ]
    (primary_span,) = [
        s
        for s in spans
        if s.attributes
        and s.attributes.get("gen_ai.response.id") == primary_id
        and s.kind == SpanKind.SERVER
    ]
    assert shadow_span.name == "chat bot"
    assert shadow_span.parent is None  # a trace of its own ...
    assert [link.context.span_id for link in shadow_span.links] == [
        primary_span.context.span_id  # ... linked to the primary's
    ]
    assert shadow_span.attributes is not None
    ttft = shadow_span.attributes["gen_ai.response.time_to_first_chunk"]
    assert isinstance(ttft, float)
    assert ttft > 0
    assert shadow_span.attributes["feature_flag.result.variant"] == "candidate"


def test_a_failed_primary_cancels_its_shadow_which_leaves_no_event(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    failing = sim_factory(model="control", error_rate=1.0)
    slow = sim_factory(model="slow", ttft=10.0)
    gw, spool = start(
        gateway_factory,
        tmp_path,
        {"control": failing.base_url, "slow": slow.base_url},
        [flag_doc("fail-bot", {"share": 1.0}, "slow")],
    )
    body = {"model": "fail-bot", "messages": MESSAGES, "max_tokens": 8}
    with httpx.Client(timeout=30) as http:
        for user in users("fail", 3):
            answer = http.post(gw.v1 + "/chat/completions", json={**body, "user": user})
            assert answer.status_code == 500
    # Nothing to pair with: each shadow is cut at once (before or after it reached the slow
    # pool) rather than left to run for 10 s.
    wait_until(
        lambda: metric(gw, "loopgate_shadow_dropped_total", reason="primary_failed") == 3,
        5,
        "shadows of failed primaries cancelled",
    )
    time.sleep(0.5)
    stats = slow.stats()
    assert stats["completed"] == 0
    assert stats["cancelled"] == stats["received"]
    assert (
        sum(
            metric(gw, "loopgate_shadow_dropped_total", flag="fail-bot", reason=r)
            for r in ("timeout", "error", "shutdown", "pool_unavailable")
        )
        == 0
    )
    assert gw.stop() == 0
    events = completions(spool)
    assert len(events) == 3
    assert all(e["role"] == "primary" and e["shadowed"] for e in events)
