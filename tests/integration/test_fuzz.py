"""Schemathesis against the running gateway's OpenAPI: no 5xx, every error in OpenAI's shape.

Bounded: a fixed number of examples per operation, derandomised, against a gateway over a
zero-latency simulator on loopback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import hash_secret
from router.model import parse_flag
from router.stores import dump_flags
from tests.support.gateway import GatewayServer, pool
from tests.support.sim import SimServer

ADMIN = "lga-fuzz-admin-0123"
EXAMPLES = 25
PREFIXES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/feedback",
    "/admin/flags",
    "/admin/feedback",
)


@pytest.fixture(scope="module")
def gateway(
    module_gateway_factory: Callable[..., GatewayServer],
    sim_factory_session: Callable[..., SimServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> GatewayServer:
    """A gateway with a writable flag file, an admin token, and a simulator behind it."""
    sim = sim_factory_session(model="policy-a")
    folder: Path = tmp_path_factory.mktemp("fuzz")
    flags = folder / "flags.yaml"
    flag = {
        "key": "assistant",
        "control": "a",
        "variants": [{"name": "a", "pool": "a", "weight": 1}],
    }
    flags.write_text(dump_flags([parse_flag(flag)]))
    return module_gateway_factory(
        {
            "pools": {"a": pool(sim.base_url, served_model="policy-a")},
            "models": {"policy-a": {"pool": "a"}},
            "flags": {"source": "file", "path": str(flags)},
            "events": {"spool": {"dir": str(folder / "spool")}},
            "auth": {"admin_tokens": [{"hash": hash_secret(ADMIN), "role": "admin", "name": "f"}]},
            "balancer": {"health_interval_s": 0, "metrics_interval_s": 0},
        }
    )


def _check(response: Any, label: str) -> None:
    assert response.status_code < 500, (label, response.status_code, response.text[:500])
    if response.status_code >= 400 and response.status_code != 405:
        doc = response.json()
        assert isinstance(doc, dict), (label, doc)
        error = doc.get("error")
        assert isinstance(error, dict), (label, doc)
        assert isinstance(error.get("message"), str), (label, doc)
        assert isinstance(error.get("type"), str), (label, doc)


def test_fuzz_the_documented_routes(gateway: GatewayServer) -> None:
    schema = schemathesis.openapi.from_url(gateway.base_url + "/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # Err would raise here: fine
        if operation.path.startswith(PREFIXES):
            operations.append(operation)
    assert len(operations) >= 8, [op.path for op in operations]
    headers = {"Authorization": f"Bearer {ADMIN}"}
    strategy = st.one_of(*(op.as_strategy() for op in operations))

    @settings(
        max_examples=EXAMPLES * len(operations),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=gateway.base_url, headers=headers, timeout=10)
        _check(response, f"{case.method} {case.formatted_path}")

    run()
    assert "Traceback" not in gateway.log()
