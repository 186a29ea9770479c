"""Experiment counters: histogram quantiles, batching, memory and Redis backends, phase readout."""

from __future__ import annotations

import asyncio
import random

import pytest

from rollout.counters import (
    Batch,
    ExperimentCounters,
    bucket_of,
    bucket_upper,
    quantile,
)
from rollout.readout import phases, variant_metrics
from rollout.stores.counters import MemoryCounterBackend, RedisCounterBackend

WEIGHTS = {"control": 90.0, "canary": 10.0}


def _lookup(version: int = 1, weights: dict[str, float] = WEIGHTS, killed: bool = False):  # type: ignore[no-untyped-def]
    return lambda key: (version, dict(weights), killed) if key == "bot" else None


def test_buckets_cover_their_values() -> None:
    for seconds in (0.001, 0.005, 0.0051, 0.05, 0.2, 1.0, 7.3, 100.0):
        i = bucket_of(seconds)
        assert seconds <= bucket_upper(i) or i == 63
        if i > 0:
            assert seconds > bucket_upper(i - 1)


def test_p95_from_the_histogram_is_within_a_bucket_of_the_truth() -> None:
    rng = random.Random(3)
    values = sorted(rng.lognormvariate(-1.0, 0.6) for _ in range(20_000))
    hist: dict[int, float] = {}
    for v in values:
        hist[bucket_of(v)] = hist.get(bucket_of(v), 0) + 1
    estimate = quantile(hist, 0.95)
    truth = values[int(0.95 * len(values))]
    assert estimate is not None
    assert abs(estimate - truth) / truth < 0.1
    assert quantile({}, 0.95) is None


def test_counts_only_reach_the_backend_on_flush_and_add_up() -> None:
    async def go() -> None:
        backend = MemoryCounterBackend()
        counters = ExperimentCounters(backend, _lookup(), clock=lambda: 100.0)
        for i in range(30):
            counters.count_exchange("bot", 1, "control", f"u{i % 10}", "ok", 0.2, 0.05)
        counters.count_exchange("bot", 1, "canary", "u99", "error", 0.01, None)
        counters.count_feedback("bot", 1, "control", "thumbs_up", None)
        counters.count_feedback("bot", 1, "control", "rating", 4.0)
        counters.count_feedback("bot", 1, "canary", "report", None)
        assert (await backend.read("bot")).tallies == {}
        counts = await counters.read("bot")  # flushes first
        control = counts.tallies[(1, "control")]
        assert control.get("exposures") == 30
        assert control.get("completions") == 30
        assert control.units == 10
        assert control.feedback("thumbs_up") == 1
        assert control.get("rating_sum") == 4.0
        canary = counts.tallies[(1, "canary")]
        assert canary.get("errors") == 1
        assert canary.get("safety") == 1
        assert [m.weights for m in counts.versions] == [WEIGHTS]
        metrics = variant_metrics(counts, "canary")
        assert metrics.error_rate == 1.0
        assert variant_metrics(counts, "control").latency_p95 == pytest.approx(
            0.2, rel=0.2
        )  # one bucket wide

    asyncio.run(go())


def test_distinct_units_are_capped_in_memory() -> None:
    async def go() -> None:
        backend = MemoryCounterBackend(max_units=5)
        counters = ExperimentCounters(backend, _lookup())
        for i in range(50):
            counters.count_exchange("bot", 1, "control", f"u{i}", "ok", 0.1, None)
        counts = await counters.read("bot")
        assert counts.tallies[(1, "control")].units == 5
        assert counts.tallies[(1, "control")].get("exposures") == 50

    asyncio.run(go())


class _Down:
    """A backend that fails until told otherwise."""

    def __init__(self) -> None:
        self.up = False
        self.inner = MemoryCounterBackend()

    async def apply(self, batch: Batch) -> None:
        if not self.up:
            raise ConnectionError("down")
        await self.inner.apply(batch)

    async def read(self, flag: str):  # type: ignore[no-untyped-def]
        return await self.inner.read(flag)

    async def flags(self) -> list[str]:
        return await self.inner.flags()

    async def aclose(self) -> None:
        return None


def test_a_failed_flush_keeps_the_batch_for_the_next() -> None:
    async def go() -> None:
        backend = _Down()
        counters = ExperimentCounters(backend, _lookup())
        counters.count_exchange("bot", 1, "control", "u1", "ok", 0.1, None)
        await counters.flush()
        assert counters.flush_errors == 1
        counters.count_exchange("bot", 1, "control", "u2", "ok", 0.1, None)
        backend.up = True
        counts = await counters.read("bot")
        assert counts.tallies[(1, "control")].get("exposures") == 2
        assert counts.tallies[(1, "control")].units == 2

    asyncio.run(go())


def test_pending_keys_are_bounded() -> None:
    counters = ExperimentCounters(MemoryCounterBackend(), None, max_pending_keys=3)
    for i in range(10):
        counters.count_exchange("bot", 1, f"v{i}", "", "ok", 0.1, None)
    assert counters.dropped == 7


def test_versions_with_the_same_weights_form_one_phase_and_killed_ones_none() -> None:
    async def go() -> None:
        counters = ExperimentCounters(MemoryCounterBackend(), None)
        counters.register_version("bot", 1, WEIGHTS, False, 10.0)
        counters.register_version("bot", 2, WEIGHTS, False, 20.0)  # a description edit
        counters.register_version("bot", 3, {"control": 50, "canary": 50}, False, 30.0)
        counters.register_version("bot", 4, {"control": 50, "canary": 50}, True, 40.0)
        for version in (1, 2, 3, 4):
            counters.count_exchange("bot", version, "canary", "u", "ok", 0.1, None)
            counters.count_feedback("bot", version, "canary", "thumbs_up", None)
        got = phases(await counters.read("bot"))
        assert [(p.started_at, p.ended_at) for p in got] == [(10.0, 30.0), (30.0, 40.0)]
        assert [p.of("canary").exposures for p in got] == [2, 1]
        assert [p.of("canary").positive for p in got] == [2, 1]

    asyncio.run(go())


def test_redis_backend_adds_up_like_memory(redis_url: str, redis_namespace: str) -> None:
    async def go() -> None:
        memory = ExperimentCounters(MemoryCounterBackend(), _lookup(), clock=lambda: 5.0)
        redis = ExperimentCounters(
            RedisCounterBackend(redis_url, redis_namespace, 60), _lookup(), clock=lambda: 5.0
        )
        # Two "replicas" writing to the same Redis add to the same numbers.
        other = ExperimentCounters(
            RedisCounterBackend(redis_url, redis_namespace, 60), _lookup(), clock=lambda: 5.0
        )
        rng = random.Random(1)
        for i in range(200):
            args = ("bot", 1, rng.choice(["control", "canary"]), f"u{i % 40}", "ok",
                    rng.random(), 0.05)  # fmt: skip
            memory.count_exchange(*args)
            (redis if i % 2 else other).count_exchange(*args)
            memory.count_feedback("bot", 1, args[2], "rating", 3.5)
            (redis if i % 2 else other).count_feedback("bot", 1, args[2], "rating", 3.5)
            # Evaluator scores are fractional sums (HINCRBYFLOAT), keyed by a version with '@'.
            score = ("bot", 1, args[2], "rm", "rm-model@0f3a", rng.gauss(0.0, 1.0))
            memory.count_score(*score)
            (redis if i % 2 else other).count_score(*score)
            memory.count_labelled_score(*score, i % 3 == 0)
            (redis if i % 2 else other).count_labelled_score(*score, i % 3 == 0)
        await other.flush()
        a, b = await memory.read("bot"), await redis.read("bot")
        assert a.tallies.keys() == b.tallies.keys()
        for key in a.tallies:
            assert a.tallies[key].fields == pytest.approx(b.tallies[key].fields)
            assert a.tallies[key].units == b.tallies[key].units  # HLL is exact at this size
        assert a.versions == b.versions
        assert await redis.backend.flags() == ["bot"]
        for c in (memory, redis, other):
            await c.backend.aclose()

    asyncio.run(go())
