"""Hostile input on the request path (issue 14), against a real `loopgate serve`.

Body limits per route and authentication before the body, the header size limit, slow
clients cut off, connections per address, `n` against the token ceiling, deep JSON,
duplicate Authorization headers, /v1/models behind the key, per-item batch feedback,
idempotency conflicts, and the small ones (echoed names, client ids, upstream errors).
Raw sockets where a well-behaved client library would not send what an attacker does.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.auth import hash_secret
from tests.support.events import spooled_events
from tests.support.faulty_upstream import FaultyUpstream
from tests.support.gateway import GatewayServer, pool

KEY = "lgk-hardening-shop-0123456789"  # app shop: a 256-token ceiling
NARROW = "lgk-hardening-narrow-0123456789"  # app narrow: only the model `ok`
METERED = "lgk-hardening-metered-0123456789"  # app metered: 10,000 tokens a minute
ADMIN = "lgk-hardening-admin-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
MODES = ["ok", "garbage", "http-500", "sse-garbage", "id-in-text"]


def _config(upstream: FaultyUpstream, **limits: Any) -> dict[str, Any]:
    pools = {mode: pool(upstream.url, served_model=mode, first_byte=5.0) for mode in MODES}
    return {
        "pools": pools,
        "models": {name: {"pool": name} for name in pools},
        "ids": {"keys": ["h" * 40]},
        "auth": {
            "keys": [
                {"hash": hash_secret(KEY), "app_id": "shop", "limits": {"max_tokens": 256}},
                {"hash": hash_secret(NARROW), "app_id": "narrow", "allowed_models": ["ok"]},
                {"hash": hash_secret(METERED), "app_id": "metered", "limits": {"tpm": 10_000}},
            ],
            "admin_tokens": [{"hash": hash_secret(ADMIN), "role": "admin", "name": "root"}],
        },
        "limits": {
            "feedback_body_bytes": 64 * 1024,
            "feedback_batch_body_bytes": 512 * 1024,
            "admin_body_bytes": 64 * 1024,
            "max_header_bytes": 16 * 1024,
            "header_timeout_s": 1.0,
            "body_timeout_s": 1.0,
            **limits,
        },
    }


@pytest.fixture(scope="module")
def gw(
    module_gateway_factory: Callable[..., GatewayServer], faulty_upstream: FaultyUpstream
) -> GatewayServer:
    """One gateway for the tests that need no events of their own."""
    return module_gateway_factory(_config(faulty_upstream))


def _exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_all(sock, timeout)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: loopgate", *headers, "", ""]
    return "\r\n".join(lines).encode()


# -- item 2: bodies, headers, slow clients, connections --------------------------------------


@pytest.mark.parametrize(
    ("path", "auth"),
    [("/v1/feedback", ""), ("/v1/feedback/batch", ""), ("/admin/flags", "")],
)
def test_unauthenticated_huge_body_is_refused_before_it_is_read(
    gw: GatewayServer, path: str, auth: str
) -> None:
    # 200 MB declared, nothing sent: the answer comes from the headers alone.
    answer = _exchange(gw.port, _head("POST", path, "Content-Length: 209715200"), timeout=5)
    assert _status(answer) == 401, answer[:300]
    assert b"authentication_error" in answer


@pytest.mark.parametrize(
    ("path", "headers", "limit"),
    [
        ("/v1/feedback", AUTH, 64 * 1024),
        ("/v1/feedback/batch", AUTH, 512 * 1024),
        ("/admin/flags", {"Authorization": f"Bearer {ADMIN}"}, 64 * 1024),
    ],
)
def test_every_route_has_its_body_limit(
    gw: GatewayServer, path: str, headers: dict[str, str], limit: int
) -> None:
    body = b'{"x": "' + b"a" * limit + b'"}'
    answer = httpx.post(gw.base_url + path, content=body, headers=headers, timeout=10)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "request_too_large"


def test_a_body_over_the_limit_is_cut_off_while_it_streams_in(gw: GatewayServer) -> None:
    """Chunked, no length declared: the 413 comes once the limit is passed, not at the end."""
    head = _head(
        "POST", "/v1/feedback", f"Authorization: Bearer {KEY}", "Transfer-Encoding: chunked"
    )
    piece = b"a" * 16384
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(head)
        while sent < 4 * 1024 * 1024:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            if select.select([sock], [], [], 0.01)[0]:
                answer = _read_all(sock, 5)
                break
    assert _status(answer) == 413, answer[:300]
    assert sent < 1024 * 1024  # refused near 64 KiB, not after 4 MiB


def test_a_header_block_over_the_limit_is_431(gw: GatewayServer) -> None:
    big = _exchange(gw.port, _head("GET", "/healthz", "X-Big: " + "a" * 100_000))
    assert _status(big) == 431, big[:300]
    fits = _exchange(gw.port, _head("GET", "/healthz", "X-Big: a", "Connection: close"))
    assert _status(fits) == 200


def test_dribbled_headers_are_cut_off_with_408(gw: GatewayServer) -> None:
    """Slowloris: a byte every 0.2 s keeps no connection past header_timeout_s (1 s here)."""
    head = _head("GET", "/healthz", "X-Slow: " + "a" * 40)
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        for byte in head[:-2]:  # never the final blank line
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.2)[0]:
                break
        answer = _read_all(sock, 10)
    assert _status(answer) == 408, answer[:300]


def test_a_silent_connection_is_closed(gw: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        answer = _read_all(sock, 10)
    assert _status(answer) == 408


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
def test_a_stalled_body_is_cut_off_with_408(gw: GatewayServer, path: str) -> None:
    head = _head("POST", path, f"Authorization: Bearer {KEY}", "Content-Length: 1000")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(head + b'{"model": "ok", ')
        answer = _read_all(sock, 10)
    assert _status(answer) == 408, answer[:300]


def test_connections_per_client_address_are_capped(
    gateway_factory: Callable[..., GatewayServer], faulty_upstream: FaultyUpstream
) -> None:
    gw = gateway_factory(
        _config(faulty_upstream, max_connections_per_client=2, header_timeout_s=30)
    )
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(2)]
    try:
        third = _exchange(gw.port, b"", timeout=5)
        assert _status(third) == 503
        assert b"too_many_connections" in third
    finally:
        for sock in held:
            sock.close()
    # Closed connections are no longer counted.
    time.sleep(0.3)
    assert gw.get("/healthz")[0] == 200


# -- item 4: n and best_of ---------------------------------------------------------------------


def test_n_counts_against_the_token_ceiling(
    gw: GatewayServer, faulty_upstream: FaultyUpstream
) -> None:
    def chat(**extra: Any) -> httpx.Response:
        body = {"model": "ok", "messages": MESSAGES, **extra}
        return httpx.post(gw.v1 + "/chat/completions", json=body, headers=AUTH, timeout=10)

    many = chat(max_tokens=256, n=400)
    assert many.status_code == 400
    assert many.json()["error"]["param"] == "n"  # over limits.max_n (128)
    over = chat(max_tokens=256, n=2)
    assert over.status_code == 400
    assert "512 tokens" in over.json()["error"]["message"]
    assert chat(max_tokens=200, best_of=2).status_code == 400
    assert chat(max_tokens=128, n=2).status_code == 200
    # No max_tokens: the ceiling is shared out between the n answers.
    assert chat(n=4).status_code == 200
    assert faulty_upstream.requests[-1]["max_tokens"] == 64


def test_n_counts_in_the_tokens_per_minute_estimate(gw: GatewayServer) -> None:
    body = {"model": "ok", "messages": MESSAGES, "max_tokens": 1000, "n": 8}
    answer = httpx.post(
        gw.v1 + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {METERED}"},
        timeout=10,
    )
    assert answer.status_code == 200
    # 8 x 1000 reserved of 10,000: not 1000.
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) < 2000


# -- item 9: duplicate Authorization -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("POST", "/v1/feedback"), ("GET", "/v1/models")],
)
def test_two_authorization_headers_are_refused(gw: GatewayServer, method: str, path: str) -> None:
    headers = [("Authorization", "Bearer bad"), ("Authorization", f"Bearer {KEY}")]
    body = {"model": "ok", "messages": MESSAGES} if method == "POST" else None
    answer = httpx.request(method, gw.base_url + path, json=body, headers=headers, timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "duplicate_authorization"


# -- item 10: /v1/models -----------------------------------------------------------------------


def test_models_needs_a_key_and_lists_what_it_may_use(gw: GatewayServer) -> None:
    assert httpx.get(gw.v1 + "/models", timeout=10).status_code == 401
    listed = httpx.get(gw.v1 + "/models", headers=AUTH, timeout=10).json()
    assert {m["id"] for m in listed["data"]} == set(MODES)
    narrow = httpx.get(gw.v1 + "/models", headers={"Authorization": f"Bearer {NARROW}"})
    assert [m["id"] for m in narrow.json()["data"]] == ["ok"]


# -- items 8 and 11: feedback -----------------------------------------------------------------


def _answer_id(gw: GatewayServer) -> str:
    client = openai.OpenAI(base_url=gw.v1, api_key=KEY, max_retries=0)
    return client.chat.completions.create(model="ok", messages=MESSAGES).id


def test_batch_answers_per_item(gw: GatewayServer) -> None:
    rid = _answer_id(gw)
    items = [
        {"response_id": rid, "kind": "thumbs_up"},
        {"response_id": rid, "kind": "no-such-kind"},
        {"response_id": rid, "kind": "rating", "value": 9},
        "not an object",
        {"response_id": rid, "kind": "comment", "comment": "fine"},
    ]
    answer = httpx.post(gw.v1 + "/feedback/batch", json={"items": items}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [item["status"] for item in data] == [200, 422, 422, 422, 200]
    assert data[1]["error"]["param"] == "kind"
    assert answer.json()["recorded"] == 2


def test_an_idempotency_key_reused_with_another_body_is_409(gw: GatewayServer) -> None:
    rid = _answer_id(gw)

    def send(kind: str) -> httpx.Response:
        body = {"response_id": rid, "kind": kind, "idempotency_key": "click-1"}
        return httpx.post(gw.v1 + "/feedback", json=body, headers=AUTH, timeout=10)

    first, repeat, other = send("thumbs_up"), send("thumbs_up"), send("thumbs_down")
    assert first.json()["recorded"] is True
    assert repeat.status_code == 200
    assert repeat.json()["duplicate"] is True
    assert other.status_code == 409, other.text
    assert other.json()["error"]["param"] == "idempotency_key"


# -- item 13: the small ones -------------------------------------------------------------------


def test_a_long_model_name_is_not_echoed_whole(gw: GatewayServer) -> None:
    name = "m" * 10_000
    body = {"model": name, "messages": MESSAGES}
    answer = httpx.post(gw.v1 + "/chat/completions", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 404
    assert len(answer.text) < 500
    narrow = httpx.post(
        gw.v1 + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {NARROW}"},
        timeout=10,
    )
    assert narrow.status_code == 403
    assert len(narrow.text) < 500


def test_the_upstream_id_inside_streamed_text_stays(gw: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gw.v1, api_key=KEY, max_retries=0)
    chunks = list(
        client.chat.completions.create(model="id-in-text", messages=MESSAGES, stream=True)
    )
    assert all(chunk.id.startswith("lg1.") for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "chatcmpl-faulty two three"


# -- with events: items 3 (client ids), 6, 7, 13 -----------------------------------------------


def test_event_outcomes_of_hostile_requests(
    gateway_factory: Callable[..., GatewayServer], faulty_upstream: FaultyUpstream, tmp_path: Path
) -> None:
    """Each request below used to be relayed wrong or recorded wrong (or not at all)."""
    spool = tmp_path / "spool"
    config = _config(faulty_upstream)
    config["events"] = {"spool": {"dir": str(spool)}}
    gw = gateway_factory(config)
    client = openai.OpenAI(base_url=gw.v1, api_key=KEY, max_retries=0)

    # 6: a 200 event stream that is not SSE ends with an in-band error.
    for mode in ("sse-garbage", "garbage"):
        with pytest.raises(openai.APIError) as caught:
            list(client.chat.completions.create(model=mode, messages=MESSAGES, stream=True))
        assert "no event stream" in str(caught.value)

    # 7: JSON nested 300 deep is a 400, and the event pipeline drops nothing.
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    body = {"model": "ok", "messages": MESSAGES, "metadata": deep}
    answer = httpx.post(gw.v1 + "/chat/completions", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 400
    assert "nested" in answer.json()["error"]["message"]
    deeper = b'{"model": "ok", "messages": [], "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    answer = httpx.post(gw.v1 + "/chat/completions", content=deeper, headers=AUTH, timeout=10)
    assert answer.status_code == 400
    assert "nested" in answer.json()["error"]["message"]

    # 13: an upstream 5xx is recorded with its message.
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="http-500", messages=MESSAGES)

    # 3 and 13: a client's X-Request-Id that is not a short ASCII token is replaced, not
    # re-encoded; a malformed traceparent gives no trace id.
    odd = httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "ok", "messages": MESSAGES},
        headers={
            b"Authorization": f"Bearer {KEY}".encode(),
            b"X-Request-Id": "caf\u00e9 alice@example.com".encode(),
            b"traceparent": b"00-alice@example.com-0000000000000001-01",
        },
        timeout=10,
    )
    assert odd.status_code == 200
    assert odd.headers["x-request-id"].isascii()
    assert "@" not in odd.headers["x-request-id"]
    good = httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "ok", "messages": MESSAGES},
        headers={**AUTH, "X-Request-Id": "req-42.a"},
        timeout=10,
    )
    assert good.headers["x-request-id"] == "req-42.a"
    metrics = httpx.get(gw.base_url + "/metrics", timeout=10).text
    dropped = [
        line for line in metrics.splitlines() if line.startswith("loopgate_events_dropped_total")
    ]
    assert all(line.endswith(" 0.0") for line in dropped), dropped
    assert gw.stop() == 0

    events = [e for e in spooled_events(spool) if e["type"] == "completion"]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_model.setdefault(event["body"]["model_requested"], []).append(event)
    for mode in ("sse-garbage", "garbage"):
        (stream_event,) = by_model[mode]
        assert stream_event["body"]["status"] == "error"
        assert "no event stream" in stream_event["body"]["error"]["message"]
    (failed,) = by_model["http-500"]
    assert "Internal Server Error" in failed["body"]["error"]["message"]
    for event in events:
        assert "@" not in event["body"]["response_id"]
        assert "alice" not in json.dumps(event.get("trace_id"))
