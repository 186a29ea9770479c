"""The /admin/flags API mounted on a small app, driven through httpx.ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from gateway.errors import install_error_handlers
from gateway.routes.admin_flags import admin_flags_router
from router.config import FlagsConfig
from router.stores import AuditRecord, FileFlagStore, dump_flags
from tests.unit.router.conftest import POOLS, flag_data, make_flag

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "flags.yaml"
    path.write_text(dump_flags([make_flag()]))
    records: list[AuditRecord] = []
    async with FileFlagStore.open(path, POOLS, records.append, reload_interval=60) as store:
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(admin_flags_router())
        app.state.runtime = SimpleNamespace(flags=store)
        app.state.settings = SimpleNamespace(flags=FlagsConfig(admin_token=TOKEN))
        app.state.audit = records
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            http.headers.update(AUTH)
            yield http


def _error(response: httpx.Response) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]
    return error


async def test_the_token_is_required(client: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        response = await client.get("/admin/flags", headers=headers)
        assert response.status_code == 401
        assert _error(response)["type"] == "authentication_error"


async def test_no_token_configured_disables_the_api(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    app.state.settings = SimpleNamespace(flags=FlagsConfig())
    response = await client.get("/admin/flags")
    assert response.status_code == 403
    assert "flags.admin_token" in _error(response)["message"]


async def test_list_and_get(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/admin/flags")).json()
    assert [f["key"] for f in listing["data"]] == ["support-bot"]
    assert listing["staleness_seconds"] == 0.0
    flag = (await client.get("/admin/flags/support-bot")).json()
    assert (flag["object"], flag["version"], flag["control"]) == ("flag", 1, "control")
    missing = await client.get("/admin/flags/nope")
    assert missing.status_code == 404
    assert _error(missing)["code"] == "not_found"


async def test_create_update_delete_with_versions(client: httpx.AsyncClient) -> None:
    created = await client.post("/admin/flags", json=flag_data("org/bot-7", version=5))
    assert created.status_code == 201
    assert created.json()["version"] == 1
    again = await client.post("/admin/flags", json=flag_data("org/bot-7"))
    assert again.status_code == 409

    body = {**created.json(), "description": "renamed"}
    updated = await client.put("/admin/flags/org/bot-7", json=body)
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    stale = await client.put("/admin/flags/org/bot-7", json=body)
    assert stale.status_code == 409
    assert "you stated version 1, the store has version 2" in _error(stale)["message"]
    no_version = await client.put("/admin/flags/org/bot-7", json={**body, "version": None})
    assert no_version.status_code == 422

    wrong = await client.delete("/admin/flags/org/bot-7", params={"expected_version": 1})
    assert wrong.status_code == 409
    gone = await client.delete("/admin/flags/org/bot-7", params={"expected_version": 2})
    assert gone.status_code == 204
    assert (await client.get("/admin/flags/org/bot-7")).status_code == 404


async def test_invalid_flags_are_422_with_the_reason(client: httpx.AsyncClient) -> None:
    bad_pool = flag_data("x", variants=[{"name": "control", "pool": "nope", "weight": 1}])
    response = await client.post("/admin/flags", json=bad_pool)
    assert response.status_code == 422
    assert "unknown pool 'nope'" in _error(response)["message"]
    response = await client.post("/admin/flags", json=flag_data("x", control="ghost"))
    assert "control 'ghost' is not a variant" in _error(response)["message"]
    response = await client.post(
        "/admin/flags/support-bot/weights", json={"weights": {"control": 0, "canary": 0}}
    )
    assert response.status_code == 422
    assert "positive total" in _error(response)["message"]


async def test_weights_kill_unkill_and_explain(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/admin/flags/support-bot/weights",
        json={"weights": {"control": 0, "canary": 100}, "expected_version": 1},
        headers={"X-Loopgate-Actor": "ana"},
    )
    assert response.status_code == 200, response.text
    assert [v["weight"] for v in response.json()["variants"]] == [0, 100]
    explain = await client.post("/admin/flags/support-bot/explain", json={"unit_id": "u1"})
    assert explain.json()["variant"] == "canary"
    assert explain.json()["reason"] == "split"
    assert explain.json()["flag_version"] == 2

    assert (await client.post("/admin/flags/support-bot/kill")).json()["killed"] is True
    explain = await client.post("/admin/flags/support-bot/explain", json={"unit_id": "u1"})
    assert (explain.json()["variant"], explain.json()["reason"]) == ("control", "kill_switch")
    stale = await client.post("/admin/flags/support-bot/unkill", json={"expected_version": 2})
    assert stale.status_code == 409
    assert (await client.post("/admin/flags/support-bot/unkill")).json()["killed"] is False

    records = client._transport.app.state.audit  # type: ignore[attr-defined]
    assert [(r.action, r.who) for r in records] == [
        ("set_weights", "ana"),
        ("kill", "admin"),
        ("unkill", "admin"),
    ]
    unknown = await client.post("/admin/flags/support-bot/weights", json={"weights": {"z": 1}})
    assert "no variant 'z'" in _error(unknown)["message"]


async def test_the_embedded_store_refuses_changes(client: httpx.AsyncClient) -> None:
    async with FileFlagStore.open(
        FlagsConfig().flags_file(), {"policy-a", "policy-b"}, lambda r: None, read_only=True
    ) as store:
        client._transport.app.state.runtime = SimpleNamespace(flags=store)  # type: ignore[attr-defined]
        response = await client.post("/admin/flags/support-bot/kill")
        assert response.status_code == 403
        assert _error(response)["code"] == "flag_store_read_only"
