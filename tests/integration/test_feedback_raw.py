"""The raw /v1/feedback endpoints (issue 19) answer bad bodies exactly as FastAPI did.

The gateway is a real `loopgate serve`; the oracle is a bare FastAPI app with the same models
and error handlers (what the routes were before they went raw), called in process: its
answers are what clients used to get, word for word.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.auth import hash_secret
from gateway.errors import install_error_handlers
from gateway.ids import Claims, ResponseIdSigner
from gateway.routes.feedback import FeedbackBatchIn, FeedbackIn
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

KEY = "lgk-raw-feedback-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
IDS_KEY = "r" * 40
JSON = "application/json"
OK = {"response_id": "x", "kind": "thumbs_up"}

# (body bytes, content type or None): every one refused before an id is verified.
SINGLE: list[tuple[bytes, str | None]] = [
    (b"", JSON),
    (b"{", JSON),
    (b'{"response_id": "x",}', JSON),
    (b"[]", JSON),
    (b'"x"', JSON),
    (b"null", JSON),
    (b"{}", JSON),
    (b'{"kind": "thumbs_up"}', JSON),
    (b'{"response_id": "x", "kind": "nope"}', JSON),
    (b'{"response_id": "", "kind": "thumbs_up"}', JSON),
    (b'{"response_id": 5, "kind": "thumbs_up"}', JSON),
    (b'{"response_id": "x", "kind": ["thumbs_up"]}', JSON),
    (b'{"response_id": "x", "kind": "rating"}', JSON),
    (b'{"response_id": "x", "kind": "rating", "value": 7}', JSON),
    (b'{"response_id": "x", "kind": "rating", "value": "abc"}', JSON),
    (b'{"response_id": "x", "kind": "rating", "value": NaN}', JSON),
    (b'{"response_id": "x", "kind": "rating", "value": 1e400}', JSON),
    (b'{"response_id": "x", "kind": "edit"}', JSON),
    (b'{"response_id": "x", "kind": "edit", "edited_text": ""}', JSON),
    (b'{"response_id": "x", "kind": "report", "category": ""}', JSON),
    (b'{"response_id": "x", "kind": "comment"}', JSON),
    (b'{"response_id": "x", "kind": "preference", "winner": "a"}', JSON),
    (b'{"response_id": "x", "kind": "preference", "other_response_id": "x", "winner": "a"}', JSON),
    (b'{"response_id": "x", "kind": "preference", "other_response_id": "y", "winner": "c"}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "winner": "a"}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "extra": 1}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "metadata": null}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "metadata": {"k": [1]}}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "metadata": {"body": [1]}}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "metadata": {"": 1}}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "idempotency_key": ""}', JSON),
    (b'{"response_id": "x", "kind": "thumbs_up", "category": "' + b"c" * 257 + b'"}', JSON),
    (b'{"response_id": "x", "kind": "\xff"}', JSON),
    (b'\xff\xfe{"response_id": 1}', JSON),
    (json.dumps({"response_id": 1, "kind": "rating"}).encode("utf-16"), JSON),
    (json.dumps(OK).encode(), None),
    (json.dumps(OK).encode(), "text/plain"),
    (b'{"kind": "nope"}', "application/vnd.loopgate+json; charset=utf-8"),
    (b'{"kind": "nope"}', "Application/JSON"),
]
BATCH: list[tuple[bytes, str | None]] = [
    (b"", JSON),
    (b"{", JSON),
    (b"[]", JSON),
    (b"{}", JSON),
    (b'{"items": []}', JSON),
    (b'{"items": "x"}', JSON),
    (b'{"items": null}', JSON),
    (b'{"items": [1], "more": 1}', JSON),
    (json.dumps({"items": [OK] * 1001}).encode(), JSON),
    (b'{"items": [1]}', "text/plain"),
]
# Batch items refused one by one: the 422 each gets is FeedbackIn's, as /v1/feedback's.
ITEMS: list[Any] = [
    {},
    {"response_id": "x", "kind": "nope"},
    {"response_id": "x", "kind": "rating", "value": 0},
    {"response_id": "x", "kind": "thumbs_up", "extra": True},
    {"response_id": "x", "kind": "thumbs_up", "metadata": {"k": {}}},
]


def _oracle() -> FastAPI:
    """The routes as FastAPI served them: validation and error rendering, nothing after."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/feedback")
    async def single(item: FeedbackIn) -> dict[str, Any]:
        return {}

    @app.post("/v1/feedback/batch")
    async def batch(body: FeedbackBatchIn) -> dict[str, Any]:
        return {}

    return app


def _expected(path: str, body: bytes, content_type: str | None) -> tuple[int, Any]:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=_oracle())
        async with httpx.AsyncClient(transport=transport, base_url="http://oracle") as client:
            headers = {"content-type": content_type} if content_type else {}
            return await client.post(path, content=body, headers=headers)

    answer = asyncio.run(call())
    return answer.status_code, answer.json()


@pytest.fixture(scope="module")
def gw(
    module_gateway_factory: Callable[..., GatewayServer],
    sim_factory_session: Callable[..., SimServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> GatewayServer:
    sim = sim_factory_session(model="policy-a")
    folder: Path = tmp_path_factory.mktemp("raw-feedback")
    return module_gateway_factory(
        {
            "pools": {"a": pool(sim.base_url, served_model="policy-a")},
            "models": {"assistant": {"pool": "a"}},
            "ids": {"keys": [IDS_KEY], "max_age_s": 3600},
            "auth": {"keys": [{"hash": hash_secret(KEY), "app_id": "shop"}]},
            "events": {"spool": {"dir": str(folder / "spool")}},
        }
    )


def _post(gw: GatewayServer, path: str, body: bytes, content_type: str | None) -> httpx.Response:
    headers = dict(AUTH)
    if content_type:
        headers["content-type"] = content_type
    return httpx.post(gw.base_url + path, content=body, headers=headers, timeout=10)


REFUSALS = [("/v1/feedback", *case) for case in SINGLE] + [
    ("/v1/feedback/batch", *case) for case in BATCH
]


@pytest.mark.parametrize(("path", "body", "content_type"), REFUSALS)
def test_refusals_are_fastapis(
    gw: GatewayServer, path: str, body: bytes, content_type: str | None
) -> None:
    status, error = _expected(path, body, content_type)
    answer = _post(gw, path, body, content_type)
    assert (answer.status_code, answer.json()) == (status, error)
    assert answer.headers["content-type"] == JSON


def test_batch_items_are_refused_as_feedbackin_refuses_them(gw: GatewayServer) -> None:
    body = json.dumps({"items": ITEMS}).encode()
    answer = _post(gw, "/v1/feedback/batch", body, JSON)
    assert answer.status_code == 200, answer.text
    assert answer.json()["recorded"] == 0
    for index, (raw, result) in enumerate(zip(ITEMS, answer.json()["data"], strict=True)):
        status, expected = _expected("/v1/feedback", json.dumps(raw).encode(), JSON)
        assert result == {"index": index, "status": status, "feedback": None, **expected}


def test_batch_items_that_are_no_object(gw: GatewayServer) -> None:
    body = json.dumps({"items": [1, None, []]}).encode()
    answer = _post(gw, "/v1/feedback/batch", body, JSON).json()
    message = "Input should be a valid dictionary or instance of FeedbackIn"
    assert {r["error"]["message"] for r in answer["data"]} == {message}
    assert {r["status"] for r in answer["data"]} == {422}


def test_valid_feedback_answers_as_feedbackout(gw: GatewayServer) -> None:
    signer = ResponseIdSigner([IDS_KEY.encode()])
    claims = Claims("assistant", "a", 3, "shop", "u" * 32, int(time.time()), "n-1")
    rid = signer.sign(claims)
    rating = {"response_id": rid, "kind": "rating", "value": 4}
    one = _post(gw, "/v1/feedback", json.dumps(rating).encode(), JSON)
    assert one.status_code == 200, one.text
    out = one.json()
    assert list(out) == [
        "object", "id", "response_id", "kind", "flag", "variant", "recorded", "duplicate",
        "source", "other_response_id", "other_variant", "winner",
    ]  # fmt: skip
    assert out["recorded"] is True
    assert out["id"]
    assert out["flag"] == "assistant"
    again = {"response_id": rid, "kind": "thumbs_up", "idempotency_key": "k1"}
    first = _post(gw, "/v1/feedback", json.dumps(again).encode(), JSON).json()
    repeat = _post(gw, "/v1/feedback", json.dumps(again).encode(), JSON).json()
    assert first["recorded"] is True
    assert repeat["duplicate"] is True
    assert repeat["id"] is None
    changed = _post(gw, "/v1/feedback", json.dumps(again | {"comment": "x"}).encode(), JSON)
    assert changed.status_code == 409
    batch = {"items": [{"response_id": rid, "kind": "accept"}, {"response_id": "lg1.x.y"}]}
    answer = _post(gw, "/v1/feedback/batch", json.dumps(batch).encode(), JSON).json()
    assert answer["recorded"] == 1
    assert [r["status"] for r in answer["data"]] == [200, 422]


def test_openapi_still_documents_the_feedback_routes(gw: GatewayServer) -> None:
    status, raw = gw.get("/openapi.json")
    assert status == 200
    schema = json.loads(raw)
    single = schema["paths"]["/v1/feedback"]["post"]
    batch = schema["paths"]["/v1/feedback/batch"]["post"]
    body = single["requestBody"]["content"][JSON]["schema"]
    assert body == {"$ref": "#/components/schemas/FeedbackIn"}
    ok = single["responses"]["200"]["content"][JSON]["schema"]
    assert ok == {"$ref": "#/components/schemas/FeedbackOut"}
    assert batch["requestBody"]["content"][JSON]["schema"]["$ref"].endswith("FeedbackBatchIn")
    assert "X-Loopgate-Consent" in {p["name"] for p in single["parameters"]}
    assert "/v1/chat/completions" in schema["paths"]
