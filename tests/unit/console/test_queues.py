"""Review queues behave the same in process and on Redis Streams (the shared Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from console.queues import MemoryQueues, QueueStore, RedisQueues

TIMEOUT_S = 0.3


def _item(n: int) -> dict[str, Any]:
    return {"item_id": f"audit:lg1.r{n}", "response_id": f"lg1.r{n}", "signals": ["audit"]}


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Callable[[], QueueStore]:
    if request.param == "memory":
        return lambda: MemoryQueues(TIMEOUT_S, 100)
    url: str = request.getfixturevalue("redis_url")
    namespace: str = request.getfixturevalue("redis_namespace")
    return lambda: RedisQueues(url, namespace, TIMEOUT_S, 100)


def _run(make: Callable[[], QueueStore], body: Callable[[QueueStore], Any]) -> Any:
    async def main() -> Any:
        store = make()
        try:
            return await body(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def test_claim_ack_in_order_and_nothing_twice(make: Callable[[], QueueStore]) -> None:
    async def body(q: QueueStore) -> None:
        for n in range(3):
            await q.add("audit", _item(n), copies=1)
        first = await q.claim("audit", "ana", 0.0)
        assert first is not None
        assert first.item["response_id"] == "lg1.r0"
        # Until acked, ana gets the same item back (a reload does not lose it).
        again = await q.claim("audit", "ana", 0.0)
        assert again is not None
        assert again.entry_id == first.entry_id
        other = await q.claim("audit", "ben", 0.0)
        assert other is not None
        assert other.item["response_id"] == "lg1.r1"
        await q.ack("audit", first, "ana", "good", 0.0)
        nxt = await q.claim("audit", "ana", 0.0)
        assert nxt is not None
        assert nxt.item["response_id"] == "lg1.r2"
        stats = await q.stats("audit", 0.0)
        assert (stats.labelled, stats.claimed) == (1, 2)

    _run(make, body)


def test_a_claim_left_past_the_timeout_goes_to_someone_else(
    make: Callable[[], QueueStore],
) -> None:
    async def body(q: QueueStore) -> None:
        await q.add("audit", _item(1), copies=1)
        held = await q.claim("audit", "ana", 0.0)
        assert held is not None
        assert await q.claim("audit", "ben", 0.1) is None
        await asyncio.sleep(TIMEOUT_S + 0.1)  # Redis measures idle time itself
        taken = await q.claim("audit", "ben", TIMEOUT_S + 0.2)
        assert taken is not None
        assert taken.item["item_id"] == held.item["item_id"]

    _run(make, body)


def test_overlap_two_gives_each_item_to_two_different_reviewers_with_kappa(
    make: Callable[[], QueueStore],
) -> None:
    async def body(q: QueueStore) -> None:
        labels = {"ana": ["good", "bad", "good", "bad"], "ben": ["good", "bad", "bad", "bad"]}
        for n in range(4):
            await q.add("audit", _item(n), copies=2)
        for reviewer, said in labels.items():
            got = []
            for label in said:
                claim = await q.claim("audit", reviewer, 0.0)
                assert claim is not None
                got.append(claim.item["response_id"])
                await q.ack("audit", claim, reviewer, label, 0.0)
            assert got == [f"lg1.r{n}" for n in range(4)]  # each item once per reviewer
            assert await q.claim("audit", reviewer, 0.0) is None
        stats = await q.stats("audit", 0.0)
        assert (stats.labelled, stats.pairs, stats.waiting) == (8, 4, 0)
        # 3 of 4 agree; chance agreement 0.5 -> kappa 0.5
        assert stats.kappa == pytest.approx(0.5)

    _run(make, body)


def test_skip_leaves_the_item_for_another_reviewer(make: Callable[[], QueueStore]) -> None:
    async def body(q: QueueStore) -> None:
        await q.add("audit", _item(1), copies=1)
        claim = await q.claim("audit", "ana", 0.0)
        assert claim is not None
        await q.ack("audit", claim, "ana", None, 0.0)
        assert await q.claim("audit", "ana", 0.0) is None
        taken = await q.claim("audit", "ben", 0.0)
        assert taken is not None
        assert taken.item["item_id"] == claim.item["item_id"]

    _run(make, body)
