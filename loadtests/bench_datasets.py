"""`datasets build` at scale: events/s and peak RSS, partitioned (bounded) vs all in memory.

Writes synthetic events (completions of the demo's support prompts with a Zipf-like skew, a
share of them judged: thumbs, edits, regenerations, preferences) to a JSON-lines file, then
builds in a child process per run, so each peak RSS (ru_maxrss) is one build's own:

- `partitioned`: what `loopgate datasets build` runs (feedback/datasets/external.py);
- `in-memory`: `build()` over every parsed event (the join holds them all), at the smaller
  sizes only: it grows with the input, which is the point.

    PYTHONPATH=. .venv/bin/python -m loadtests.bench_datasets [--events 1000000 100000]

The regex redaction pass runs; the Presidio pass is off (pii_recall.py times it per text).
Prints a table and the ratios; asserts nothing. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from sim.population import prompt_weights, prompts

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ANSWERS = ("Sure: open Settings, then Orders, and pick the one you need.",
           "I'm sorry about that. Our team will look into it within a day.",
           "You can do this yourself in the app under Account.",
           "Please contact support with your order number.")  # fmt: skip


def _envelope(kind: str, at: datetime, body: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": kind,
            "schema_version": 1,
            "time": at.isoformat().replace("+00:00", "Z"),
            "gateway": "bench",
            "trace_id": None,
            "body": body,
        }
    )


def events(total: int, seed: int = 11, judged: float = 0.3) -> Iterator[bytes]:
    """About `total` event lines: completions, and feedback on `judged` of them."""
    rng = random.Random(seed)
    asked = prompts()
    weights = list(itertools.accumulate(prompt_weights(len(asked), 0.9)))
    made = 0
    index = 0
    while made < total:
        index += 1
        prompt = rng.choices(asked, cum_weights=weights)[0]
        variant = "canary" if rng.random() < 0.5 else "control"
        rid = f"lg1.bench{index:09d}"
        unit = f"{rng.randrange(50_000):032x}"
        at = T0 + timedelta(seconds=index * 0.5)
        text = ANSWERS[hash((prompt, variant)) % len(ANSWERS)]
        yield _envelope("completion", at, {
            "response_id": rid, "flag": "support-bot", "flag_version": 1, "variant": variant,
            "app": "bench", "unit_hash": unit, "model_requested": "support-bot",
            "model_served": f"policy-{variant}",
            "request": {"messages": [{"role": "user", "content": prompt}],
                        "params": {"temperature": 0}},
            "response": {"text": text}, "finish_reason": "stop", "latency_ms": 120.0,
        })  # fmt: skip
        made += 1
        if rng.random() >= judged:
            continue
        roll = rng.random()
        body: dict[str, Any] = {"response_id": rid, "app": "bench", "unit_hash": unit}
        if roll < 0.7:
            body["kind"] = "thumbs_up" if rng.random() < 0.6 else "thumbs_down"
        elif roll < 0.8:
            body.update(kind="edit", edited_text=text + " Thanks for your patience.")
        elif roll < 0.9:
            body["kind"] = "regenerate"
        else:
            body.update(kind="preference", other_response_id=f"lg1.bench{index - 1:09d}",
                        winner=rng.choice("ab"), source="reviewer", reviewer="rita")  # fmt: skip
        yield _envelope("feedback", at + timedelta(seconds=20), body)
        made += 1


def child(path: Path, mode: str, parts: int) -> None:
    """One build; prints `events rows seconds peak-MiB cpu-seconds` for the parent."""
    from feedback.datasets.build import BuildConfig, build
    from feedback.datasets.export import export
    from feedback.datasets.join import JoinStats, parse_lines
    from feedback.datasets.sources import read_jsonl
    from feedback.datasets.thorough import ThoroughConfig
    from feedback.datasets.writers import write_all

    config = BuildConfig(thorough=ThoroughConfig(mode="off"))
    started = time.perf_counter()
    if mode == "partitioned":
        with tempfile.TemporaryDirectory() as out:
            doc = export(read_jsonl([path]), config, Path(out) / "ds", sources=[], parts=parts,
                         formats=["parquet"])  # fmt: skip
        lines, rows = doc["join"]["lines"], sum(sum(c.values()) for c in doc["counts"].values())
    else:
        stats = JoinStats()
        built = build(parse_lines(read_jsonl([path]), stats), config, stats)
        with tempfile.TemporaryDirectory() as out:  # the same files, so the same imports
            write_all(Path(out), built, ["parquet"])
        lines, rows = stats.lines, sum(len(r) for r in built.rows.values())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    print(lines, rows, time.perf_counter() - started, usage.ru_maxrss / 1024, cpu)  # KiB on Linux


def run(path: Path, mode: str, parts: int) -> tuple[int, int, float, float, float]:
    """(events, rows, seconds, peak RSS MiB, CPU seconds) of one build in a child process."""
    command = [sys.executable, "-m", "loadtests.bench_datasets", "--child", str(path), mode]
    done = subprocess.run(
        [*command, str(parts)], capture_output=True, text=True, check=True, env=os.environ
    )
    lines, rows, seconds, peak, cpu = done.stdout.split()
    return int(lines), int(rows), float(seconds), float(peak), float(cpu)


def main() -> None:
    """Generate, build, print."""
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--in-memory-max", type=int, default=200_000)
    parser.add_argument("--parts", type=int, default=64)
    args = parser.parse_args()
    results: list[tuple[str, int, int, float, float, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        plan = [(n, mode) for n in args.events for mode in ("partitioned", "in-memory")
                if mode == "partitioned" or n <= args.in_memory_max]  # fmt: skip
        for size in sorted(set(args.events)):
            path = Path(scratch) / f"events-{size}.jsonl"
            started = time.perf_counter()
            with open(path, "wb") as handle:
                for line in events(size):
                    handle.write(line + b"\n")
            mib = path.stat().st_size / 2**20
            took = time.perf_counter() - started
            print(f"wrote {size:,} events ({mib:,.0f} MiB) in {took:.0f} s", flush=True)
            for n, mode in plan:
                if n != size:
                    continue
                lines, rows, seconds, peak, cpu = run(path, mode, args.parts)
                results.append((mode, lines, rows, seconds, peak, cpu))
                rate = lines / seconds
                print(f"  {mode}: {lines:,} events -> {rows:,} rows in {seconds:.1f} s"
                      f" ({cpu:.1f} s CPU), {rate:,.0f} events/s, peak RSS {peak:,.0f} MiB",
                      flush=True)  # fmt: skip
            path.unlink()
    print()
    head = f"{'build':<12} {'events':>10} {'rows':>8} {'seconds':>8} {'events/s':>9}"
    print(f"{head} {'per CPU-s':>9} {'peak MiB':>9}")
    for mode, lines, rows, seconds, peak, cpu in results:
        print(f"{mode:<12} {lines:>10,} {rows:>8,} {seconds:>8.1f} {lines / seconds:>9,.0f}"
              f" {lines / cpu:>9,.0f} {peak:>9,.0f}")  # fmt: skip
    by = {(mode, lines): (seconds, peak) for mode, lines, _, seconds, peak, _ in results}
    for (mode, lines), (seconds, peak) in by.items():
        if mode == "partitioned" and ("in-memory", lines) in by:
            mem_s, mem_peak = by[("in-memory", lines)]
            print(f"at {lines:,} events: partitioned/in-memory time {seconds / mem_s:.2f}x,"
                  f" peak RSS {peak / mem_peak:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
