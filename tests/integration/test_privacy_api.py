"""POST /admin/privacy/forget on a running gateway whose keys are in (the shared) Redis:
admin role only, bad input changes nothing, the key is gone for every reader afterwards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from feedback.privacy.redis_store import key_name
from gateway.auth import hash_secret
from gateway.ids import ResponseIdSigner
from tests.support.gateway import GatewayServer, pool
from tests.support.ports import wait_until
from tests.support.sim import SimServer

SIGNING, UNIT_KEY = "s" * 32, "u" * 32
ADMIN, EDITOR = "admin-" + "a" * 26, "editor-" + "e" * 25


def test_forget_through_the_admin_api(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
) -> None:
    sim = sim_factory(model="policy-a")
    gw = gateway_factory(
        {
            "pools": {"a": pool(sim.base_url, served_model="policy-a")},
            "models": {"assistant": {"pool": "a"}},
            "ids": {"keys": [SIGNING], "unit_key": UNIT_KEY},
            "auth": {
                "admin_tokens": [
                    {"hash": hash_secret(ADMIN), "role": "admin", "name": "privacy-officer"},
                    {"hash": hash_secret(EDITOR), "role": "flag_editor", "name": "flags"},
                ]
            },
            "events": {
                "spool": {"dir": str(tmp_path / "spool")},
                "privacy": {"store": "redis", "redis_url": redis_url, "namespace": redis_namespace},
            },
        }
    )
    unit = ResponseIdSigner([SIGNING.encode()], UNIT_KEY.encode()).unit_hash("zoe")
    gw.client().chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hello"}], user="zoe"
    )
    store = redis.Redis.from_url(redis_url)
    try:
        with httpx.Client(base_url=gw.base_url, timeout=10) as client:

            def forget(token: str, body: dict[str, str]) -> httpx.Response:
                return client.post(
                    "/admin/privacy/forget", json=body, headers={"Authorization": f"Bearer {token}"}
                )

            # The event is sealed off the request path, soon after the answer.
            wait_until(lambda: bool(store.exists(key_name(redis_namespace, unit))), 10, "key")

            refused = forget(EDITOR, {"unit_id": "zoe"})
            assert refused.status_code == 403
            assert refused.json()["error"]["type"] == "permission_error"
            for bad in ({"unit_id": "zoe", "unit_hash": unit}, {"unit_hash": "../../etc"}, {}):
                answer = forget(ADMIN, bad)
                assert answer.status_code in (400, 422), (bad, answer.text)
                assert "error" in answer.json()
            assert store.exists(key_name(redis_namespace, unit))  # nothing changed

            done = forget(ADMIN, {"unit_id": "zoe"})
            assert done.status_code == 200, done.text
            assert done.json() == {
                "object": "privacy.forget",
                "unit_hash": unit,
                "key_deleted": True,
            }
            assert not store.exists(key_name(redis_namespace, unit))
            again = forget(ADMIN, {"unit_hash": unit})
            assert again.json()["key_deleted"] is False
    finally:
        store.close()
