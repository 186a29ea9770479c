"""X-Loopgate-Attr-<name> headers are the attributes targeting rules test (docs/routing.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from tests.support.sim import SimServer
from tests.unit.observability.live import flag_settings, running

ASK = {"model": "bot", "user": "unit-1", "messages": [{"role": "user", "content": "hi"}]}


def test_attribute_headers_drive_attr_rules(
    sim_factory: Callable[..., SimServer], tmp_path: Path
) -> None:
    sims = {name: sim_factory(model=f"policy-{name}") for name in "ab"}
    settings = flag_settings({n: s.base_url for n, s in sims.items()}, tmp_path)
    doc = yaml.safe_load(settings.flags.path.read_text())  # type: ignore[union-attr]
    flag = doc["flags"][0]
    flag["variants"][0]["weight"], flag["variants"][1]["weight"] = 100, 0  # the split: a
    flag["rules"] = [
        {"kind": "attr_equals", "attribute": "tier", "value": "gold", "variant": "b"},
        {"kind": "attr_in", "attribute": "region", "values": ["eu", "uk"], "variant": "b"},
    ]
    settings.flags.path.write_text(yaml.safe_dump(doc))  # type: ignore[union-attr]

    async def variants() -> list[tuple[str, str]]:
        async with running(settings) as (_, client):
            cases: list[list[tuple[str, str]]] = [
                [],
                [("X-Loopgate-Attr-Tier", "gold")],
                [("x-loopgate-attr-TIER", "gold")],  # names are case-insensitive
                [("X-Loopgate-Attr-Tier", "silver")],
                [("X-Loopgate-Attr-Region", "uk")],
                [("X-Loopgate-Attr-Tier", "gold"), ("X-Loopgate-Attr-Tier", "silver")],
            ]
            out = []
            for headers in cases:
                answer = await client.post(
                    "/v1/chat/completions", json=ASK, headers=httpx.Headers(headers)
                )
                assert answer.status_code == 200
                out.append(
                    (answer.headers["x-loopgate-variant"], answer.headers["x-loopgate-flag"])
                )
            return out

    got = [v for v, _ in asyncio.run(variants())]
    # No header: the split (all a); gold and uk match; silver does not; a repeated header
    # keeps the last value.
    assert got == ["a", "b", "b", "a", "b", "a"]
