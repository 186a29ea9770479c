"""Erasure's cost: sealing per event in the pipeline worker, opening per event in a reader,
and spool throughput with sealing off and on (file and Redis key stores).

Run: .venv/bin/python -m loadtests.bench_privacy [--events 20000] [--units 1000]
Prints numbers and ratios; nothing here asserts on timing. Redis: the one on 127.0.0.1:6379
(keys under a namespace of this run, deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis

from feedback.config import EventsConfig, SpoolConfig
from feedback.emitter import open_pipeline
from feedback.privacy import KeyRing, UnitKey, open_event
from feedback.privacy.config import PrivacyConfig
from feedback.privacy.seal import seal_event
from feedback.redact import Redactor
from feedback.schema import (
    CompletionBody,
    CompletionEvent,
    PlainEvent,
    RequestContent,
    ResponseContent,
    Usage,
)
from feedback.scrub import scrub_json

MESSAGE = (
    "Hi, I'm having trouble with my order. It was supposed to arrive yesterday but the "
    "tracking page shows it's still in the warehouse. Can you tell me what's going on and "
    "when I can expect it? My account is registered under my usual address. Thanks!"
)
REDIS_URL = "redis://127.0.0.1:6379/0"


def unit(i: int, units: int) -> str:
    return f"{i % units:032x}"


def completion_dict(i: int, units: int) -> dict[str, Any]:
    body = CompletionBody(
        response_id=f"lg1.r{i}.m",
        flag="support-bot",
        flag_version=3,
        variant="canary",
        app="app-1",
        unit_hash=unit(i, units),
        model_requested="support-bot",
        model_served="policy-b",
        request=RequestContent(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": MESSAGE},
            ],
            params={"temperature": 0.2},
        ),
        response=ResponseContent(text=MESSAGE),
        usage=Usage(prompt_tokens=60, completion_tokens=50, total_tokens=110),
        latency_ms=120.0,
        ttft_ms=40.0,
    )
    data: dict[str, Any] = CompletionEvent.create(
        body, gateway="bench", now=time.time()
    ).model_dump()
    return data


def plain(data: dict[str, Any]) -> PlainEvent:
    return PlainEvent("completion", "loopgate.completions.v1", data["body"]["response_id"], data)


def bench_worker(count: int) -> None:
    """us/event of the worker's scrub + serialise, without and with sealing (key cached)."""
    redactor = Redactor()
    key = UnitKey.new()

    def seal(data: dict[str, Any]) -> None:
        seal_event(data, key, os.urandom(12))

    results: dict[str, float] = {}
    for _ in range(5):  # alternated, best of five: the machine is shared and noisy
        for label, hook in (("without sealing", None), ("with sealing", seal)):
            events = [plain(completion_dict(i, 1)) for i in range(count)]
            start = time.perf_counter()
            for event in events:
                scrub_json(event, redactor, hook)
            took = (time.perf_counter() - start) / count * 1e6
            results[label] = min(results.get(label, took), took)
    alone = float("inf")
    for _ in range(5):  # seal_event by itself, on events already redacted
        ready = [orjson.loads(scrub_json(plain(completion_dict(i, 1)), redactor)[0])
                 for i in range(count)]  # fmt: skip
        start = time.perf_counter()
        for data in ready:
            seal_event(data, key, os.urandom(12))
        alone = min(alone, (time.perf_counter() - start) / count * 1e6)
    print(f"worker: seal_event alone        {alone:7.2f} us/event (key cached)")
    off, on = results["without sealing"], results["with sealing"]
    print(f"worker: redact + serialise      {off:7.2f} us/event")
    print(
        f"worker: redact + seal + serial. {on:7.2f} us/event  (+{on - off:.2f} us, x{on / off:.2f})"
    )
    sealed = [orjson.loads(scrub_json(plain(completion_dict(i, 1)), redactor, seal)[0])
              for i in range(count)]  # fmt: skip
    keys = KeyRing({unit(0, 1): key})
    start = time.perf_counter()
    for event in sealed:
        open_event(event, keys)
    opened = (time.perf_counter() - start) / count * 1e6
    start = time.perf_counter()
    for event in sealed:
        open_event(event, KeyRing())
    erased = (time.perf_counter() - start) / count * 1e6
    print(f"reader: open_event              {opened:7.2f} us/event (key in memory)")
    print(f"reader: open_event, forgotten   {erased:7.2f} us/event")


async def pump(config: EventsConfig, count: int, units: int) -> tuple[float, int]:
    events = [plain(completion_dict(i, units)) for i in range(count)]
    async with open_pipeline(config, "bench") as pipeline:
        start = time.perf_counter()
        for index, event in enumerate(events):
            pipeline.emit(event)
            if index % 500 == 499:
                await asyncio.sleep(0)  # as a server would: requests interleave with the worker
        while pipeline.stats.spooled + pipeline.stats.dropped < count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        took = time.perf_counter() - start
    sealed = pipeline.sealer.stats.sealed if pipeline.sealer else 0
    return count / took, sealed


def bench_pipeline(count: int, units: int) -> None:
    """Events/s into the spool, sealing off and on; fresh key stores (keys made as they come)."""
    namespace = f"bench-privacy-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = []
            for label, privacy in (
                ("off", PrivacyConfig(seal=False)),
                ("file store", PrivacyConfig(dir=Path(tmp) / "keys")),
                (
                    "redis store",
                    PrivacyConfig(store="redis", redis_url=REDIS_URL, namespace=namespace),
                ),
            ):
                # New units (keys made as they come), then the same units again: the
                # steady state, where returning users' keys exist (cached, or in the store).
                for n_units, run in ((units, "new"), (units, "returning"), (count, "new")):
                    if label == "off" and run != "new":
                        continue
                    spool = SpoolConfig(dir=Path(tmp) / f"spool-{label}-{n_units}-{run}")
                    config = EventsConfig(spool=spool, queue_size=count, privacy=privacy)
                    rate, sealed = asyncio.run(pump(config, count, n_units))
                    rows.append(
                        (f"{label}, {run}" if label != "off" else label, n_units, rate, sealed)
                    )
            base = rows[0][2]
            print(f"pipeline -> spool, {count} completion events:")
            for label, n_units, rate, _sealed in rows:
                print(
                    f"  sealing {label:22} {n_units:>5} units {rate:7.0f} events/s "
                    f"{1e6 / rate:6.1f} us/event x{rate / base:.2f}"
                )
    finally:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def main() -> None:
    """Run every benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--units", type=int, default=1000, help="distinct units (keys)")
    args = parser.parse_args()
    bench_worker(min(args.events, 20_000))
    bench_pipeline(args.events, args.units)


if __name__ == "__main__":
    main()
