"""Keys, roles and limits through a real gateway: who may call, judge and administer what."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.auth import hash_secret
from router.model import parse_flag
from router.stores import dump_flags
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

SHOP, BANK, QA = "lgk-shop-0123456789", "lgk-bank-0123456789", "lgk-qa-0123456789"
VIEWER, EDITOR, ADMIN = "lga-viewer-0123", "lga-editor-0123", "lga-admin-0123"
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]

FLAG = {
    "key": "assistant",
    "control": "a",
    "variants": [
        {"name": "a", "pool": "a", "weight": 100},
        {"name": "b", "pool": "b", "weight": 0},
    ],
}


@pytest.fixture(scope="module")
def gateway(
    module_gateway_factory: Callable[..., GatewayServer],
    sim_factory_session: Callable[..., SimServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> GatewayServer:
    """Three app keys (one limited to a model and max_tokens, one QA), three admin tokens."""
    a = sim_factory_session(model="policy-a")
    b = sim_factory_session(model="policy-b")
    folder = tmp_path_factory.mktemp("auth")
    flags = folder / "flags.yaml"
    flags.write_text(dump_flags([parse_flag(FLAG)]))
    config = {
        "pools": {
            "a": pool(a.base_url, served_model="policy-a"),
            "b": pool(b.base_url, served_model="policy-b"),
        },
        "models": {"policy-b": {"pool": "b"}},
        "flags": {"source": "file", "path": str(flags)},
        "events": {"spool": {"dir": str(folder / "spool")}},
        "auth": {
            "keys": [
                {"hash": hash_secret(SHOP), "app_id": "shop"},
                {
                    "hash": hash_secret(BANK),
                    "app_id": "bank",
                    "allowed_models": ["assistant"],
                    "limits": {"max_tokens": 50},
                },
                {"hash": hash_secret(QA), "app_id": "qa", "qa_override": True},
            ],
            "admin_tokens": [
                {"hash": hash_secret(VIEWER), "role": "viewer", "name": "vera"},
                {"hash": hash_secret(EDITOR), "role": "flag_editor", "name": "ed"},
                {"hash": "sha256:" + hash_secret(ADMIN), "role": "admin", "name": "ada"},
            ],
        },
    }
    return module_gateway_factory(config)


def _chat(gw: GatewayServer, key: str, **kwargs: Any) -> Any:
    with gw.client(api_key=key) as client:
        return client.chat.completions.create(
            model=kwargs.pop("model", "assistant"), messages=MESSAGES, **kwargs
        )


def test_a_key_is_required_and_never_echoed(gateway: GatewayServer) -> None:
    for key in ("unused", SHOP[:-1] + "x"):
        with pytest.raises(openai.AuthenticationError) as caught:
            _chat(gateway, key)
        assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]
        assert key not in str(caught.value.body)
    response = httpx.post(gateway.v1 + "/chat/completions", json={"model": "x"}, timeout=10)
    assert response.status_code == 401
    assert key not in gateway.log()


def test_models_and_max_tokens_per_key(gateway: GatewayServer) -> None:
    assert _chat(gateway, SHOP, model="policy-b").model == "policy-b"
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _chat(gateway, BANK, model="policy-b")
    assert caught.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as too_many:
        _chat(gateway, BANK, max_tokens=51)
    assert too_many.value.body["param"] == "max_tokens"  # type: ignore[index]
    assert _chat(gateway, BANK, max_tokens=50).id.startswith("lg1.")


def test_qa_override_only_for_keys_allowed_to(gateway: GatewayServer) -> None:
    headers = {"X-Loopgate-Variant": "b"}
    for key, variant in ((SHOP, "a"), (QA, "b")):
        with gateway.client(api_key=key) as client:
            answer = client.chat.completions.with_raw_response.create(
                model="assistant", messages=MESSAGES, extra_headers=headers
            )
        assert answer.headers["x-loopgate-variant"] == variant


def test_an_app_cannot_judge_another_apps_answer(gateway: GatewayServer) -> None:
    answer = _chat(gateway, SHOP)

    def feedback(key: str) -> httpx.Response:
        return httpx.post(
            gateway.v1 + "/feedback",
            json={"response_id": answer.id, "kind": "thumbs_up"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )

    foreign = feedback(BANK)
    assert foreign.status_code == 403, foreign.text
    assert foreign.json()["error"]["type"] == "permission_error"
    assert feedback("not-a-key").status_code == 401
    assert feedback(SHOP).status_code == 200


# (method, path, body, lowest role allowed)
ADMIN_ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/admin/flags", None, "viewer"),
    ("GET", "/admin/flags/assistant", None, "viewer"),
    ("POST", "/admin/flags/assistant/explain", {"unit_id": "u1"}, "viewer"),
    ("POST", "/admin/flags", {**FLAG, "key": "made-{role}"}, "flag_editor"),
    (
        "PUT",
        "/admin/flags/made-{role}",
        {**FLAG, "key": "made-{role}", "version": 1},
        "flag_editor",
    ),
    ("POST", "/admin/flags/made-{role}/weights", {"weights": {"a": 50, "b": 50}}, "flag_editor"),
    ("POST", "/admin/flags/made-{role}/kill", None, "flag_editor"),
    ("POST", "/admin/flags/made-{role}/unkill", None, "flag_editor"),
    ("DELETE", "/admin/flags/made-{role}", None, "admin"),
]
RANK = {"none": -1, "viewer": 0, "flag_editor": 1, "admin": 2}
TOKENS = {"none": "wrong", "viewer": VIEWER, "flag_editor": EDITOR, "admin": ADMIN}


@pytest.mark.parametrize("role", ["none", "viewer", "flag_editor", "admin"])
def test_every_admin_route_checks_the_role(gateway: GatewayServer, role: str) -> None:
    headers = {"Authorization": f"Bearer {TOKENS[role]}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=10) as http:
        if RANK[role] < RANK["flag_editor"]:
            # The routes that change flags need one to exist to touch.
            made = httpx.post(
                gateway.base_url + "/admin/flags",
                json={**FLAG, "key": f"made-{role}"},
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=10,
            )
            assert made.status_code == 201, made.text
        for method, path, body, needed in ADMIN_ROUTES:
            if isinstance(body, dict) and "variants" in body:
                body = {**body, "key": f"made-{role}"}
            response = http.request(method, path.format(role=role), json=body)
            if role == "none":
                assert response.status_code == 401, (method, path)
            elif RANK[role] < RANK[needed]:
                assert response.status_code == 403, (method, path, response.text)
                assert response.json()["error"]["type"] == "permission_error"
            else:
                assert response.status_code < 300, (method, path, response.text)
    log = gateway.log()
    for secret in (VIEWER, EDITOR, ADMIN, SHOP, BANK, QA):
        assert secret not in log


def test_audit_names_the_token_not_a_header(tmp_path: Path) -> None:
    from gateway.auth import AdminPrincipal
    from gateway.routes.admin_flags import _who

    assert _who(AdminPrincipal("ed", "flag_editor"), "mallory") == "ed (mallory)"
    assert _who(AdminPrincipal("admin", "admin", shared=True), "ana") == "ana"
