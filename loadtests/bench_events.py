"""Event pipeline benchmarks: ids, redaction, events/s into Kafka (real tansu) and the spool.

Run: .venv/bin/python -m loadtests.bench_events [--events 20000]
Prints numbers and ratios; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import tempfile
import time
import timeit
from pathlib import Path

from feedback.config import EventsConfig, KafkaConfig, SpoolConfig
from feedback.emitter import open_pipeline
from feedback.redact import Redactor
from feedback.schema import (
    COMPLETIONS_TOPIC,
    CompletionBody,
    CompletionEvent,
    FeedbackBody,
    FeedbackEvent,
    PlainEvent,
    RequestContent,
    ResponseContent,
)
from feedback.scrub import scrub_json
from gateway.ids import Claims, ResponseIdSigner, new_nonce, unit_hash
from tests.support.kafka import TansuBroker

MESSAGE = (
    "Hi, I'm having trouble with my order. It was supposed to arrive yesterday but the "
    "tracking page shows it's still in the warehouse. Can you tell me what's going on and "
    "when I can expect it? My account is registered under my usual address. Thanks!"
)
MESSAGE_WITH_PII = MESSAGE + " Reach me at jane.doe@example.com or +1 415 555 2671."


def per_call_us(fn: object, number: int) -> float:
    """Mean microseconds per call."""
    return timeit.timeit(fn, number=number) / number * 1e6  # type: ignore[arg-type]


def bench_ids() -> None:
    signer = ResponseIdSigner([b"k" * 32, b"o" * 32])
    claims = Claims("support-bot", "canary", 3, "app-1", unit_hash("u", b"k" * 32), 1, new_nonce())
    rid = signer.sign(claims)
    old = ResponseIdSigner([b"o" * 32]).sign(claims)
    print(f"id length                  {len(rid)} chars")
    print(f"sign                       {per_call_us(lambda: signer.sign(claims), 50_000):7.2f} us")
    verify = per_call_us(lambda: signer.verify(rid, now=2, max_age=60), 50_000)
    print(f"verify (first key)         {verify:7.2f} us")
    rotated = per_call_us(lambda: signer.verify(old, now=2, max_age=60), 50_000)
    print(f"verify (second key)        {rotated:7.2f} us")
    hashing = per_call_us(lambda: signer.unit_hash("user-42"), 50_000)
    print(f"unit_hash                  {hashing:7.2f} us")


def sample_completion(i: int, text: str) -> CompletionEvent:
    body = CompletionBody(
        response_id=f"lg1.r{i % 512}.m",
        flag="support-bot",
        flag_version=3,
        variant="canary",
        app="app-1",
        unit_hash="0" * 32,
        model_requested="support-bot",
        model_served="policy-b",
        request=RequestContent(
            messages=[{"role": "user", "content": text}], params={"temperature": 0.2}
        ),
        response=ResponseContent(text=text),
        latency_ms=120.0,
        ttft_ms=40.0,
    )
    return CompletionEvent.create(body, gateway="bench", now=time.time())


def sample_feedback(i: int) -> FeedbackEvent:
    body = FeedbackBody(
        response_id=f"lg1.r{i % 512}.m", app="app-1", kind="thumbs_down", comment="too long"
    )
    return FeedbackEvent.create(body, gateway="bench", now=time.time())


def bench_redaction() -> None:
    redactor = Redactor()
    clean = per_call_us(lambda: redactor.redact(MESSAGE), 20_000)
    pii = per_call_us(lambda: redactor.redact(MESSAGE_WITH_PII), 20_000)
    print(f"redact typical message     {clean:7.2f} us ({len(MESSAGE)} chars, nothing found)")
    print(f"redact message with PII    {pii:7.2f} us (email + phone)")
    build = per_call_us(lambda: sample_completion(0, MESSAGE), 5_000)
    print(f"build completion event     {build:7.2f} us (on the request path)")
    for label, text in (("no PII", MESSAGE), ("email + phone", MESSAGE_WITH_PII)):
        print(f"scrub + serialise event    {scrub_small_completion_us(redactor, text):7.2f} us "
              f"(in the worker; small completion, {label})")  # fmt: skip


def scrub_small_completion_us(redactor: Redactor, text: str, number: int = 5_000) -> float:
    """The worker's path (scrub_json of the dict the gateway builds), best of 5 runs."""
    data = sample_completion(0, text).model_dump()
    runs = []
    for _ in range(5):
        # scrub_json redacts a PlainEvent's dict in place: a fresh copy for every call.
        fresh = iter(
            [
                PlainEvent("completion", COMPLETIONS_TOPIC, "k", copy.deepcopy(data))
                for _ in range(number)
            ]
        )
        runs.append(per_call_us(lambda it=fresh: scrub_json(next(it), redactor), number))
    return min(runs)


async def pump(config: EventsConfig, count: int, label: str) -> None:
    events = [sample_feedback(i) if i % 2 else sample_completion(i, MESSAGE) for i in range(count)]
    async with open_pipeline(config, "bench") as pipeline:
        start = time.perf_counter()
        emit_start = time.perf_counter()
        for index, event in enumerate(events):
            pipeline.emit(event)
            if index % 500 == 499:
                await asyncio.sleep(0)  # as a server would: requests interleave with the worker
        emit_s = time.perf_counter() - emit_start
        while pipeline.stats.sent + pipeline.stats.spooled < count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        took = time.perf_counter() - start
    stats = pipeline.stats
    print(
        f"{label:26} {count / took:9.0f} events/s  (emit {emit_s / count * 1e6:.2f} us/event; "
        f"sent {stats.sent}, spooled {stats.spooled}, dropped {stats.dropped})"
    )


def bench_pipeline(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spool = SpoolConfig(dir=Path(tmp) / "spool-only")
        asyncio.run(pump(EventsConfig(spool=spool, queue_size=count), count, "pipeline -> spool"))
        broker = TansuBroker()
        broker.start()
        try:
            kafka = KafkaConfig(bootstrap_servers=[broker.bootstrap], partitions=6)
            config = EventsConfig(
                kafka=kafka, spool=SpoolConfig(dir=Path(tmp) / "kafka"), queue_size=count
            )
            asyncio.run(pump(config, count, "pipeline -> Kafka (tansu)"))
        finally:
            broker.kill()


def main() -> None:
    """Run every benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    bench_ids()
    bench_redaction()
    bench_pipeline(args.events)


if __name__ == "__main__":
    main()
