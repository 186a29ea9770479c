"""Upstream faults and bad input through the openai SDK: the right error, fast, no hang."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.support.faulty_upstream import FaultyUpstream
from tests.support.gateway import GatewayServer, pool
from tests.support.ports import free_port, wait_until

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(
    module_gateway_factory: Callable[..., GatewayServer], faulty_upstream: FaultyUpstream
) -> GatewayServer:
    """A gateway whose models each hit one FaultyUpstream behaviour."""
    modes = ["ok", "garbage", "hang", "http-500", "flat-error", "die-midstream", "stall-midstream"]
    pools = {
        mode: pool(faulty_upstream.url, served_model=mode, first_byte=1.0, total=10)
        for mode in modes
    }
    # Timeouts far beyond the tests' waits: only a client leaving ends these requests early.
    pools["hold"] = pool(faulty_upstream.url, served_model="hold", first_byte=60.0, total=120)
    dead = f"http://127.0.0.1:{free_port()}"
    pools["half-down"] = pool(dead, faulty_upstream.url, served_model="ok")
    pools["all-down"] = pool(dead, f"http://127.0.0.1:{free_port()}", served_model="ok")
    config = {
        "pools": pools,
        "models": {name: {"pool": name} for name in pools},
        "limits": {"max_body_bytes": 2048},
    }
    return module_gateway_factory(config)


def test_garbage_from_upstream_is_a_502(gateway: GatewayServer) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="garbage", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "bad_gateway"  # type: ignore[index]


def test_hanging_upstream_is_a_504_after_the_first_byte_timeout(gateway: GatewayServer) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="hang", messages=MESSAGES)
    assert caught.value.status_code == 504


def test_upstream_http_error_without_json_is_wrapped(gateway: GatewayServer) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="http-500", messages=MESSAGES)
    assert caught.value.status_code == 500
    assert "Internal Server Error" in caught.value.message


def test_vllm_flat_error_reaches_the_client_in_openai_shape(gateway: GatewayServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="flat-error", messages=MESSAGES)
    assert caught.value.body == {
        "message": "too long",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error(gateway: GatewayServer) -> None:
    stream = gateway.client().chat.completions.create(
        model="die-midstream", messages=MESSAGES, stream=True
    )
    seen: list[str] = []

    def drain() -> None:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        drain()
    assert seen == ["one ", "two "]
    assert "broke off" in caught.value.message


def test_upstream_stalling_mid_stream_ends_with_a_timeout_error(gateway: GatewayServer) -> None:
    stream = gateway.client().chat.completions.create(
        model="stall-midstream", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "stalled" in caught.value.message


def test_one_endpoint_down_is_routed_around(gateway: GatewayServer) -> None:
    for _ in range(4):
        answer = gateway.client().chat.completions.create(model="half-down", messages=MESSAGES)
        assert answer.choices[0].message.content == "fine"


def test_every_endpoint_down_is_a_503(gateway: GatewayServer) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="all-down", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "upstream_unavailable"  # type: ignore[index]


def test_unknown_model_is_a_404(gateway: GatewayServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_invalid_fields_are_a_400(gateway: GatewayServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="ok", messages=[])
    assert caught.value.body["param"] == "messages"  # type: ignore[index]


def test_oversized_body_is_a_413(gateway: GatewayServer) -> None:
    big = [{"role": "user", "content": "x" * 4096}]
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(model="ok", messages=big)  # type: ignore[arg-type]
    assert caught.value.status_code == 413


def test_bad_json_is_a_400_in_openai_shape(gateway: GatewayServer) -> None:
    answer = httpx.post(gateway.v1 + "/chat/completions", content=b"{nope", timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_json"
    assert answer.headers["x-request-id"]


def test_request_id_is_honoured_and_echoed(gateway: GatewayServer) -> None:
    body = {"model": "ok", "messages": MESSAGES}
    answer = httpx.post(
        gateway.v1 + "/chat/completions", json=body, headers={"X-Request-Id": "abc-123"}
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "abc-123"


def test_answers_carry_no_server_banner(gateway: GatewayServer) -> None:
    answer = httpx.post(
        gateway.v1 + "/chat/completions", json={"model": "ok", "messages": MESSAGES}
    )
    assert answer.status_code == 200
    assert "server" not in answer.headers  # `loopgate serve` runs uvicorn without its banner
    assert answer.headers["date"]


def test_client_leaving_mid_stream_cancels_the_upstream(
    gateway: GatewayServer, faulty_upstream: FaultyUpstream
) -> None:
    before = faulty_upstream.cancelled
    body = {"model": "stall-midstream", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.v1 + "/chat/completions", json=body, timeout=10) as answer:
        for line in answer.iter_lines():
            if line.startswith("data:"):
                break  # leave after the first chunk
    wait_until(lambda: faulty_upstream.cancelled == before + 1, 5, "upstream cancellation")


def test_client_leaving_before_the_answer_cancels_the_upstream_at_once(
    gateway: GatewayServer, faulty_upstream: FaultyUpstream
) -> None:
    # Gone within the first milliseconds, before the disconnect watch has started: the
    # upstream must still be told, not left generating until its own timeout.
    before = faulty_upstream.cancelled
    body = json.dumps({"model": "hold", "messages": MESSAGES}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head + body)
        time.sleep(0.01)
    wait_until(lambda: faulty_upstream.cancelled == before + 1, 5, "upstream cancellation")


def test_retries_and_connect_failures_are_counted(
    gateway_factory: Callable[..., GatewayServer], faulty_upstream: FaultyUpstream
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = {
        "pools": {"p": pool(dead, faulty_upstream.url, served_model="ok")},
        "models": {"m": {"pool": "p"}},
        "balancer": {"strategy": "round_robin", "health_interval_s": 0, "metrics_interval_s": 0},
    }
    gw = gateway_factory(config)
    for _ in range(4):
        gw.client().chat.completions.create(model="m", messages=MESSAGES)
    text = gw.get("/metrics")[1].decode()
    retries = _sample(text, 'loopgate_upstream_retries_total{pool="p"}')
    connects = _sample(text, 'loopgate_upstream_errors_total{kind="connect",pool="p"}')
    assert retries >= 1
    assert retries == connects


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
