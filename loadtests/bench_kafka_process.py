"""Where the Kafka producer's CPU goes: on a thread of the serving process, or in a child.

Drives the sink directly against a real tansu broker, as the pipeline does (one batch at a
time, each awaited), with batches of 16 and 64 completion and feedback events, the two
producer modes side by side in each round. For each it prints the serving process's CPU per
record (all its threads: time.process_time), the child's (live, from /proc/<pid>/stat),
records/s, and, in a second pass, how late a 1 ms timer on the serving loop (uvloop, as
`loopgate serve` runs) fires while the sink sends (what requests would feel), then ratios.

Run: .venv/bin/python -m loadtests.bench_kafka_process [--records 8000] [--rounds 3]
`--profile 500`: instead, the child's own work (KafkaSink.send_batch, batches of 500 as the
pipeline sends under load) under cProfile, the calling thread and kafka-python's network
thread each profiled, with the CPU per record of each.
Nothing here asserts on timing; on a shared machine read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import uvloop

from feedback.config import KafkaConfig
from feedback.schema import to_json
from feedback.sinks.base import Record
from feedback.sinks.kafka import KafkaSink
from feedback.sinks.kafka_process import KafkaProcessSink
from loadtests.bench_events import MESSAGE, sample_completion, sample_feedback
from loadtests.bench_gateway import cpu_seconds
from loadtests.bench_shape import rss_kib
from tests.support.kafka import TansuBroker

MODES = ("thread", "process")


def sample_records(count: int) -> list[Record]:
    """Completions and feedback on 512 response ids, serialised as the pipeline sends them."""
    events = [sample_feedback(i) if i % 2 else sample_completion(i, MESSAGE) for i in range(count)]
    return [Record(event.topic, event.key, to_json(event)) for event in events]


def child_cpu_s(pid: int | None) -> float:
    """User + system CPU of a live child (read while it runs: it is not waited for yet)."""
    return cpu_seconds(pid) if pid is not None else 0.0


def child_rss_mib(pid: int | None) -> float:
    return rss_kib(pid) / 1024 if pid is not None else 0.0


@dataclass
class Run:
    serving_us: float  # serving-process CPU per record
    child_us: float  # the child's CPU per record
    rate: float  # records/s
    lag_p99_ms: float  # a 1 ms timer on the serving loop, how late (99th percentile)
    child_rss_mib: float


def make_sink(mode: str, config: KafkaConfig) -> KafkaSink | KafkaProcessSink:
    return KafkaProcessSink(config) if mode == "process" else KafkaSink(config)


async def send_all(sink: KafkaSink | KafkaProcessSink, batches: Sequence[list[Record]]) -> None:
    for batch in batches:
        await sink.emit(batch)


async def lag_while(work: asyncio.Task[None]) -> list[float]:
    """How late a 1 ms sleep on this loop wakes, in ms, until `work` is done."""
    late = []
    while not work.done():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        late.append((time.perf_counter() - start) * 1000 - 1)
    await work
    return late


async def measure(mode: str, config: KafkaConfig, batches: list[list[Record]]) -> Run:
    sink = make_sink(mode, config)
    try:
        for batch in batches[:5]:  # connect, create topics, warm up
            await sink.emit(batch)
        pid = sink.pid if isinstance(sink, KafkaProcessSink) else None
        count = sum(len(b) for b in batches)
        cpu, child, wall = time.process_time(), child_cpu_s(pid), time.perf_counter()
        await send_all(sink, batches)
        wall = time.perf_counter() - wall
        cpu, child = time.process_time() - cpu, child_cpu_s(pid) - child
        lag = await lag_while(asyncio.create_task(send_all(sink, batches)))
        rss = child_rss_mib(pid)
    finally:
        await sink.aclose()
    return Run(
        cpu / count * 1e6,
        child / count * 1e6,
        count / wall,
        statistics.quantiles(lag, n=100)[98] if len(lag) > 1 else 0.0,
        rss,
    )


def median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def report(size: int, runs: dict[str, list[Run]]) -> None:
    print(f"\nbatches of {size} ({len(runs['thread'])} rounds, medians)")
    print(f"  {'mode':8} {'serving us/rec':>15} {'child us/rec':>13} {'records/s':>10} "
          f"{'loop lag p99':>13} {'child RSS':>10}")  # fmt: skip
    for mode in MODES:
        run = {field: median(runs[mode], field) for field in Run.__dataclass_fields__}
        print(
            f"  {mode:8} {run['serving_us']:15.1f} {run['child_us']:13.1f} {run['rate']:10.0f} "
            f"{run['lag_p99_ms']:10.2f} ms {run['child_rss_mib']:6.0f} MiB"
        )
    thread, process = runs["thread"], runs["process"]
    serving = median(thread, "serving_us") / median(process, "serving_us")
    total = (median(process, "serving_us") + median(process, "child_us")) / median(
        thread, "serving_us"
    )
    print(f"  serving-process CPU per record, thread / process: {serving:.1f}x")
    print(f"  all CPU per record (serving + child), process / thread: {total:.2f}x")
    lag = median(thread, "lag_p99_ms") / max(median(process, "lag_p99_ms"), 1e-3)
    print(f"  serving loop lag p99, thread / process: {lag:.1f}x")


def profile_child_work(config: KafkaConfig, records: list[Record], size: int) -> None:
    """KafkaSink.send_batch (what the child runs per batch) under cProfile, in this process:
    the calling thread and the client's network thread, each with its own profile."""
    sink = KafkaSink(config)
    batches = [records[i : i + size] for i in range(0, len(records), size)]
    threads: list[cProfile.Profile] = []

    def start_in_thread(*_: object) -> None:  # the first event of a thread started from now
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)  # CPU: waits for the GIL are not work
        threads.append(profile)
        profile.enable()

    threading.setprofile(start_in_thread)  # the producer's sender thread starts on connect
    main_profile = cProfile.Profile(time.thread_time)
    try:
        sink.send_batch(batches[0])  # connect, topics
        threading.setprofile(None)  # type: ignore[arg-type]
        main_cpu, cpu = time.thread_time(), time.process_time()
        main_profile.enable()
        for batch in batches:
            sink.send_batch(batch)
        main_profile.disable()
        main_cpu, cpu = time.thread_time() - main_cpu, time.process_time() - cpu
    finally:
        sink.close_producer()
    count = sum(len(b) for b in batches)
    print(f"\n{count} records in batches of {size}, profiled: process CPU "
          f"{cpu / count * 1e6:.1f} us/record, of it the sending thread "
          f"{main_cpu / count * 1e6:.1f} and the client's other threads "
          f"{(cpu - main_cpu) / count * 1e6:.1f} (profiling inflates both)")  # fmt: skip
    for title, profile in (
        ("sending thread", main_profile),
        *(("network thread", t) for t in threads),
    ):
        print(f"\n-- {title}, by own time")
        pstats.Stats(profile).sort_stats("tottime").print_stats(18)


def main() -> None:
    """Both modes, batches of 16 and 64, `--rounds` rounds alternating the modes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=8000, help="records per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, metavar="SIZE", help="profile the child's work")
    args = parser.parse_args()
    records = sample_records(args.records)
    size_bytes = sum(len(r.value) for r in records) / len(records)
    print(f"{len(records)} records of {size_bytes:.0f} bytes on average, tansu on loopback")
    broker = TansuBroker()
    broker.start()
    try:
        config = KafkaConfig(bootstrap_servers=[broker.bootstrap], partitions=6)
        if args.profile:
            profile_child_work(config, records, args.profile)
            return
        for size in (16, 64):
            batches = [records[i : i + size] for i in range(0, len(records), size)]
            runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
            for round_ in range(args.rounds):
                # Alternate which mode goes first: the machine's load drifts.
                for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        runs[mode].append(runner.run(measure(mode, config, batches)))
            report(size, runs)
    finally:
        broker.kill()


if __name__ == "__main__":
    main()
