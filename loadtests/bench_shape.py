"""Loopgate at production shape (issue 19), measured side by side in one run.

Four modes, each interleaving what it compares (A, B, A, B, ...) over `--rounds` rounds, so
that a busy machine disturbs both sides alike; every figure is a ratio from one run.

- `kafka`:    gateway CPU per json request, events to Kafka (a local tansu) vs the spool;
              a Kafka gateway per `--producers` mode (process, thread).
- `feedback`: /v1/feedback and /v1/feedback/batch into Kafka beside a bare FastAPI+pydantic
              route parsing the same bodies; every accepted event read back from the topic.
- `workers`:  `--workers 2` (Prometheus multiprocess mode) vs `--workers 1`, CPU per request
              summed over the serve process and its workers.
- `streams`:  N open streams of a slow simulator through the gateway, the bare aiohttp
              pass-through and directly: RSS per open stream, CPU per relayed chunk, the
              inter-chunk gaps the client sees.

CPU is user+sys from /proc of the server processes over the measured window (and the drain
of the events it caused). `kafka` and `feedback` give a gateway's CPU twice: its serving
process(es) alone, and its whole tree with the Kafka producer child (a process whose command
line holds `feedback.sinks.kafka_process`). A process that exits within the window takes its
CPU with it (/proc forgets it); workers and producer children live as long as the gateway.
Events emitted vs delivered are printed for every gateway. Nothing asserts on timing.
Loopback only; every server is started here on a free port and stopped by its pid.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.bench_shape MODE [--rounds 2] [--duration 5]

A/B of code or packages in the same rounds: `--kafka-variant NAME=DIR` (kafka),
`--feedback-variant NAME=DIR` (feedback), `--workers-variant NAME=DIR` (workers: another
`--workers 2`) and `--streams-variant NAME=DIR` (streams) add a gateway with DIR first on its
sys.path (a package installed there with `pip install --target DIR`, or an older `gateway/`
from `git archive REV gateway | tar -x -C DIR`; servers run with `python -P`, so the
checkout does not shadow it). `--profile` runs the gateways under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from feedback.schema import COMPLETIONS_TOPIC, FEEDBACK_TOPIC

# An argument of a Kafka producer child (`python -P -m feedback.sinks.kafka_process`).
from feedback.sinks.kafka_process import MODULE as PRODUCER_MODULE
from loadtests.bench_gateway import (
    CLK_TCK,
    PY,
    ROOT,
    Proc,
    bench_config,
    cpu_seconds,
    free_port,
    started,
)
from tests.support.kafka import TansuBroker

console = Console(width=160)


# ---------------------------------------------------------------- processes and counters


def tree_pids(root: int) -> list[int]:
    """A process and its live descendants (serve's workers, producer children), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
    out, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        out.extend(frontier)
    return out


ROLES = ("serving", "producer")


def process_role(argv: tuple[str, ...]) -> str:
    """'producer' for a Kafka producer child, 'serving' for the rest of a serve tree."""
    return "producer" if PRODUCER_MODULE in argv else "serving"


@dataclass(frozen=True)
class ProcCpu:
    """One process of a tree at one reading."""

    argv: tuple[str, ...]
    cpu_s: float  # user+sys, its own (not its reaped children's)

    @property
    def role(self) -> str:
        """What it does: 'serving' or 'producer'."""
        return process_role(self.argv)


def tree_reading(root: int) -> dict[int, ProcCpu]:
    """Each live process of a tree by pid, the root first: its arguments and CPU."""
    out: dict[int, ProcCpu] = {}
    for pid in tree_pids(root):
        with suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            out[pid] = ProcCpu(tuple(argv.split("\0")[:-1]), cpu_seconds(pid))
    return out


def cpu_by_role(before: dict[int, ProcCpu], after: dict[int, ProcCpu]) -> dict[str, float]:
    """CPU seconds each role of a tree used between two readings (every role, 0 if none).

    A process started in between counts from zero. One that exited in between is not in
    `after`, and its CPU is lost: /proc forgets it (its parent's cutime gets it only once
    reaped, and cutime is not read). Workers and producer children live as long as the
    gateway, so this does not arise while a load is measured.
    """
    out = dict.fromkeys(ROLES, 0.0)
    for pid, now in after.items():
        then = before.get(pid)
        out[now.role] += now.cpu_s - (then.cpu_s if then is not None else 0.0)
    return out


def process_labels(reading: dict[int, ProcCpu]) -> dict[int, str]:
    """'what pid' for each process of a serve tree: the root ('serve', or 'supervisor' over
    workers), 'worker', 'producer' (a Kafka producer child) or 'helper'."""
    kinds = {
        pid: "producer" if p.role == "producer"
        else "worker" if any("spawn_main" in arg for arg in p.argv) else "helper"
        for pid, p in reading.items()
    }  # fmt: skip
    root = next(iter(reading), None)
    if root is not None:
        kinds[root] = "supervisor" if "worker" in kinds.values() else "serve"
    return {pid: f"{kind} {pid}" for pid, kind in kinds.items()}


def process_split(before: dict[int, ProcCpu], after: dict[int, ProcCpu]) -> str:
    """'label: seconds' for each process of a tree between two readings."""
    labels = process_labels(after)
    return ", ".join(
        f"{labels[pid]}: {now.cpu_s - (before[pid].cpu_s if pid in before else 0.0):.1f}s"
        for pid, now in after.items()
    )


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of one process: its main thread (the event loop) and its other threads."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = "event loop" if task.name == str(pid) else "other threads"
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def thread_split(before: dict[str, float], after: dict[str, float]) -> str:
    """'name: seconds (share)' for the threads that used CPU between two readings."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    total = sum(delta.values()) or 1.0
    return ", ".join(
        f"{k}: {v:.1f}s ({v / total:.0%})"
        for k, v in sorted(delta.items(), key=lambda kv: -kv[1])
        if v > 0.05
    )


PROFILE_ON = False
PROFILE: dict[str, Path] = {}  # --profile: gateway name -> its cProfile stats file


def print_profiles(top: int = 25) -> None:
    """The profiled gateways' hottest functions (by own time, and cumulative)."""
    import pstats

    for name, path in PROFILE.items():
        if not path.exists():
            console.print(f"[red]no profile written for {name}[/red]")
            continue
        console.rule(f"cProfile of gateway {name} (event-loop thread; times inflated by it)")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)


def rss_kib(pid: int) -> int:
    """Resident set size of one process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(pid)


SCRAPES: dict[str, int] = {}  # /metrics scrapes made per gateway URL
SCRAPE_COST: dict[str, dict[str, float]] = {}  # CPU s of one scrape by role, per gateway URL


def event_counters(url: str) -> dict[str, float]:
    """The gateway's loopgate_events_* totals (unlabelled), by short name."""
    SCRAPES[url] = SCRAPES.get(url, 0) + 1
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"loopgate_events_(\w+)_total ([\d.e+]+)", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def delivered(counters: dict[str, float]) -> float:
    """Events the sink has taken for good: acknowledged by Kafka or fsync'd to the spool."""
    return counters.get("sent", 0.0) + counters.get("spooled", 0.0)


def wait_drained(url: str, timeout: float = 60.0) -> dict[str, float]:
    """Poll until every emitted event was delivered or dropped (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        c = event_counters(url)
        if delivered(c) + c.get("dropped", 0.0) >= c.get("emitted", 0.0):
            return c
        if time.monotonic() > deadline:
            return c
        time.sleep(0.25)


def scrape_cpu_s(proc: Proc, count: int = 10) -> dict[str, float]:
    """CPU seconds one /metrics scrape costs the gateway by role (idle, `count` in a row,
    averaged).

    Waiting for the drain scrapes /metrics; a scrape is not cheap (tens of ms with every
    family), so drive() takes that cost out of what a load is charged.
    """
    before = tree_reading(proc.proc.pid)
    for _ in range(count):
        event_counters(proc.url)
    used = cpu_by_role(before, tree_reading(proc.proc.pid))
    return {role: seconds / count for role, seconds in used.items()}


def topic_event_ids(bootstrap: str, topic: str, expected: int) -> tuple[int, int]:
    """(records, distinct event ids) in a topic, read from the start until it stays quiet."""
    from kafka import KafkaConsumer

    from feedback.sinks.kafka import load_kafka_client

    load_kafka_client()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[bootstrap],
        group_id=f"bench-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    ids: set[str] = set()
    records = 0
    deadline = time.monotonic() + max(60.0, expected / 1000)
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=300)
            for batch in got.values():
                for record in batch:
                    records += 1
                    ids.add(json.loads(record.value)["event_id"])
            if got:
                quiet_since = time.monotonic()
            elif records >= expected and time.monotonic() - quiet_since > 2:
                break
    finally:
        consumer.close()
    return records, len(ids)


# ---------------------------------------------------------------- servers


def sim_cmd(port: int, itl: float = 0.0, tokens: int = 16) -> list[str]:
    """A `loopgate sim` with no waiting (or tokens spaced `itl` apart), no jitter."""
    return [
        PY, "-m", "cli", "sim", "--port", str(port), "--model", "bench", "--ttft", "0",
        "--itl", str(itl), "--output-tokens", str(tokens), "--jitter", "0",
        "--max-num-seqs", "100000",
    ]  # fmt: skip


def gateway_cmd(folder: Path, name: str, sim_port: int, events: dict[str, Any]) -> list[str]:
    """`loopgate serve` as bench_gateway runs it: a two-variant flag, everything on."""
    config = bench_config(folder, sim_port, events)
    # One key for every gateway of a run: ids from one verify at the others (variants).
    config["ids"] = {"keys": ["bench-shape-signing-key-0123456789abcdef"]}
    path = folder / f"gateway-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    head = [PY, "-m", "cli"]
    if PROFILE_ON:
        PROFILE[name] = Path(tempfile.gettempdir()) / f"bench-shape-{name}.prof"
        head = [PY, "-m", "loadtests.profile_serve", str(PROFILE[name])]
    return [*head, "serve", "--config", str(path), "--log-level", "warning"]


def with_path(path: str, cmd: list[str]) -> list[str]:
    """`cmd` (python -m ...) with `path` first on sys.path. Python's -P keeps the working
    directory (the checkout, where servers start) off sys.path: without it, `-m` puts it first
    and a variant would run the checkout's code instead of its own."""
    return ["env", f"PYTHONPATH={path}", cmd[0], "-P", *cmd[1:]]


def _first_on_path(folder: str) -> str:
    """A PYTHONPATH with `folder` first, then the checkout."""
    return os.pathsep.join((str(Path(folder).resolve()), str(ROOT)))


def _variant(spec: str) -> tuple[str, str]:
    """`NAME=DIR` -> (NAME, a PYTHONPATH with DIR first)."""
    name, _, folder = spec.partition("=")
    return name, _first_on_path(folder)


def serve(stack: ExitStack, name: str, cmd: list[str], health: str = "/healthz") -> Proc:
    """Start a server on a free port for the rest of the stack."""
    port = free_port()
    return stack.enter_context(started(name, [*cmd, "--port", str(port)], port, health))


def spool_events(folder: Path, name: str) -> dict[str, Any]:
    """Events config: the spool only."""
    return {"spool": {"dir": str(folder / f"spool-{name}")}}


def kafka_events(
    folder: Path, name: str, bootstrap: str, producer: str | None = None
) -> dict[str, Any]:
    """Events config: Kafka, with the spool as fallback; `producer` ('process' or 'thread')
    sets events.kafka.producer, None leaves the gateway's default."""
    kafka: dict[str, Any] = {"bootstrap_servers": [bootstrap]}
    if producer is not None:
        kafka["producer"] = producer
    return {**spool_events(folder, name), "kafka": kafka}


def reference_cmd(sim_port: int) -> Callable[[int], list[str]]:
    """The bare FastAPI+aiohttp pass-through (with bare feedback routes)."""
    return lambda port: [PY, "-m", "loadtests.reference_passthrough", str(port),
                         f"http://127.0.0.1:{sim_port}"]  # fmt: skip


def serve_reference(stack: ExitStack, sim_port: int) -> Proc:
    """Start the reference on a free port."""
    port = free_port()
    return stack.enter_context(started("reference", reference_cmd(sim_port)(port), port, "/docs"))


# ---------------------------------------------------------------- wrk


@dataclass
class Load:
    """One wrk load on one server: calls, errors, wall time, CPU of its process tree.

    wrk counts the calls answered within its window; the calls still in flight when it stops
    (up to one per connection) are served too, and their CPU is in `cpu_s`. A gateway counts
    what it served (`served`: the events it emitted, one per request or feedback item), so
    its CPU is divided by that; the reference has no counter, so its CPU is divided by
    what wrk counted (a small overcount: at most `conns` calls against thousands).

    `cpu_s` is the whole tree; `producer_cpu_s` the part of it in Kafka producer children.
    The figures below are for the whole tree; `serving()` gives them for the rest.
    """

    calls: int
    errors: int
    seconds: float
    cpu_s: float
    per: int = 1  # items per call
    served: int | None = None  # items the gateway served (its emitted-events delta)
    producer_cpu_s: float = 0.0

    def serving(self) -> Load:
        """The same load charged only to the serving processes (producer children left out)."""
        return replace(self, cpu_s=self.cpu_s - self.producer_cpu_s, producer_cpu_s=0.0)

    @property
    def ok(self) -> int:
        """Calls answered 2xx within the window."""
        return self.calls - self.errors

    @property
    def items_per_s(self) -> float:
        """Items served per wall second: a gateway's emitted events (a batch answered 200 may
        refuse some of its items: 503 events_backlogged), else what wrk counted 2xx."""
        basis = self.served if self.served is not None else self.ok * self.per
        return basis / self.seconds

    @property
    def cpu_us_per_item(self) -> float:
        """CPU per item served, us."""
        basis = self.served if self.served is not None else self.ok * self.per
        return self.cpu_s * 1e6 / max(basis, 1)

    @property
    def cpu_ms_per_call(self) -> float:
        """CPU per call, ms."""
        return self.cpu_us_per_item * self.per / 1000


def chat_rounds(
    gws: dict[str, Proc], bodies: list[str], args: argparse.Namespace, loads: dict[str, list[Load]]
) -> None:
    """`args.rounds` rounds of chat json loads, each gateway in turn; appended to `loads`."""
    for _ in range(args.rounds):
        for name, gw in gws.items():
            loads[name].append(
                drive(gw, "/v1/chat/completions", bodies, args.concurrency, args.duration, True)
            )


def _lua(path: str, bodies: list[str]) -> str:
    quoted = ", ".join(json.dumps(b) for b in bodies)
    script = (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"local bodies = {{{quoted}}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f"  return wrk.format(nil, {json.dumps(path)}, nil, bodies[n % #bodies + 1])\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    return handle.name


def drive(
    proc: Proc,
    path: str,
    bodies: list[str],
    conns: int,
    duration: float,
    gateway: bool,
    per: int = 1,
) -> Load:
    """wrk at `conns` for `duration` s; CPU over the load and (gateway) its events' drain."""
    script = _lua(path, bodies)
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{max(1, round(duration))}s", "-s", script,
           proc.url + path]  # fmt: skip
    before = event_counters(proc.url) if gateway else {}
    scrapes0 = SCRAPES.get(proc.url, 0)
    cpu0, start = tree_reading(proc.proc.pid), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    seconds = time.monotonic() - start
    served: int | None = None
    if gateway:
        after = wait_drained(proc.url)
        served = int(after.get("emitted", 0) - before.get("emitted", 0))
    else:
        time.sleep(0.3)  # the calls in flight when wrk stopped
    cpu = cpu_by_role(cpu0, tree_reading(proc.proc.pid))
    if gateway:
        scrapes = SCRAPES[proc.url] - scrapes0
        if proc.url not in SCRAPE_COST:
            SCRAPE_COST[proc.url] = scrape_cpu_s(proc)
        cpu = {role: s - scrapes * SCRAPE_COST[proc.url][role] for role, s in cpu.items()}
    os.unlink(script)
    calls = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Load(calls, errors, seconds, sum(cpu.values()), per, served, cpu["producer"])


def chat_bodies(stream: bool = False, tokens: int = 16) -> list[str]:
    """Chat bodies of 1,000 distinct users (so flag assignment hashes real units)."""
    return [
        json.dumps(
            {
                "model": "bench",
                "user": f"u{n}",
                "messages": [{"role": "user", "content": "Tell me about parcels and delivery."}],
                "max_tokens": tokens,
                "stream": stream,
            }
        )
        for n in range(1000)
    ]


def rng(values: list[float], fmt: str = "{:.3f}") -> str:
    """A range 'lo-hi' (or the one value)."""
    lo, hi = min(values), max(values)
    return (
        fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"
    )


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print one rich table."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    console.print(t)


View = Callable[[Load], Load]  # how a load's CPU is charged


def _whole(load: Load) -> Load:
    return load


# A gateway's serving process(es) alone, then its whole tree (with any producer children).
VIEWS: tuple[View, View] = (Load.serving, _whole)
BOTH = "serving process (whole tree)"


def _both(figure: Callable[[View], list[float]], fmt: str) -> str:
    """A figure's range over rounds as BOTH says: 'serving (whole tree)'."""
    return f"{rng(figure(Load.serving), fmt)} ({rng(figure(_whole), fmt)})"


def _ratios(base: list[Load], other: list[Load], view: View = _whole) -> list[float]:
    """`other`'s CPU per call over `base`'s, round by round."""
    pairs = zip(base, other, strict=True)
    return [view(b).cpu_ms_per_call / view(a).cpu_ms_per_call for a, b in pairs]


def _round_rows(
    loads: dict[str, list[Load]],
    baseline: str,
    views: tuple[View, ...] = (_whole,),
) -> list[list[str]]:
    """A row per round and server: round, name, req/s, then for each view its CPU ms per
    call and that over the baseline's in the same round, then errors."""
    rows = []
    for i, base in enumerate(loads[baseline]):
        for name, xs in loads.items():
            x = xs[i]
            cpu = []
            for view in views:
                ms = view(x).cpu_ms_per_call
                cpu += [f"{ms:.3f}", f"{ms / view(base).cpu_ms_per_call:.2f}x"]
            rows.append([str(i + 1), name, f"{x.ok / x.seconds:,.0f}", *cpu, str(x.errors)])
    return rows


# ---------------------------------------------------------------- mode: kafka


def mode_kafka(args: argparse.Namespace, folder: Path) -> None:
    """Gateway CPU per json request with events to Kafka vs to the spool, interleaved.

    One Kafka gateway per `--producers` mode (`events.kafka.producer`: the producer in a
    child process or in a thread of the gateway). CPU is given for the serving process
    alone and for the whole tree (with its producer child), each against the spool's.

    `--kafka-variant NAME=DIR` adds a Kafka gateway with DIR first on its PYTHONPATH (e.g.
    the `crc32c` package installed there with `pip install --target DIR crc32c`, which
    kafka-python picks up instead of its pure-Python CRC-32C): measured in the same rounds,
    with its code's default producer (no `producer` key, which older code would refuse).
    """
    broker = TansuBroker()
    broker.start()
    try:
        with ExitStack() as stack:
            sim_port = free_port()
            stack.enter_context(started("sim", sim_cmd(sim_port), sim_port, "/health"))
            spool = gateway_cmd(folder, "spool", sim_port, spool_events(folder, "spool"))
            gws = {"spool": serve(stack, "spool", spool)}
            for mode in args.producers:
                name = f"kafka-{mode}"
                events = kafka_events(folder, name, broker.bootstrap, mode)
                gws[name] = serve(stack, name, gateway_cmd(folder, name, sim_port, events))
            for variant in args.kafka_variant:
                name, path = _variant(variant)
                cmd = gateway_cmd(folder, name, sim_port,
                                  kafka_events(folder, name, broker.bootstrap))  # fmt: skip
                gws[name] = serve(stack, name, with_path(path, cmd))
            bodies = chat_bodies()
            for gw in gws.values():  # warm up (and create the topics)
                drive(gw, "/v1/chat/completions", bodies, 4, 1, True)
            loads: dict[str, list[Load]] = {name: [] for name in gws}
            procs0 = {name: tree_reading(gw.proc.pid) for name, gw in gws.items()}
            chat_rounds(gws, bodies, args, loads)
            counters = {name: wait_drained(gw.url) for name, gw in gws.items()}
            by_proc = {name: process_split(procs0[name], tree_reading(gw.proc.pid))
                       for name, gw in gws.items()}  # fmt: skip
        emitted = int(sum(c.get("emitted", 0) for n, c in counters.items() if n != "spool"))
        records, distinct = topic_event_ids(broker.bootstrap, COMPLETIONS_TOPIC, emitted)
    finally:
        broker.kill()
    table(f"chat json c={args.concurrency}, one worker: events to the spool vs to Kafka; "
          "CPU of the serving process alone, and of the whole tree (with a producer child)",
          ["round", "events to", "req/s", "serving CPU ms/req", "vs spool", "tree CPU ms/req",
           "vs spool", "errors"],
          _round_rows(loads, "spool", VIEWS))  # fmt: skip
    targets = [
        row for name in loads if name != "spool"
        for row in _kafka_targets(name, loads["spool"], loads[name])
    ]  # fmt: skip
    targets += [
        [f"{name}: emitted / sent+spooled / dropped", _counts(c), "all / 0"]
        for name, c in counters.items()
    ]
    targets.append(
        ["completions topic: records / distinct event ids", f"{records:,} / {distinct:,}",
         f"= emitted to Kafka ({emitted:,})"]
    )  # fmt: skip
    table(f"targets; CPU: {BOTH}", ["figure", "measured", "target"], targets)
    for name, split in by_proc.items():
        console.print(f"{name}: CPU by process over the rounds: {split}")


def _kafka_targets(name: str, spool: list[Load], kafka: list[Load]) -> list[list[str]]:
    """Target rows of one Kafka gateway against the spool's, CPU charged both ways."""

    def ratio(view: View) -> list[float]:
        return _ratios(spool, kafka, view)

    def cpu(view: View) -> list[float]:
        return [view(k).cpu_ms_per_call for k in kafka]

    def added(view: View) -> list[float]:
        pairs = zip(spool, kafka, strict=True)
        return [(view(k).cpu_ms_per_call - view(s).cpu_ms_per_call) * 1000 for s, k in pairs]

    return [
        [f"{name} / spool CPU per request", _both(ratio, "{:.2f}x"), "<= 1.1x"],
        [f"{name} CPU per request, ms", _both(cpu, "{:.3f}"), "<= 0.20 ms"],
        [f"{name}: CPU added per request (per event), us", _both(added, "{:.0f}"), ""],
    ]


def _counts(c: dict[str, float]) -> str:
    return f"{c.get('emitted', 0):,.0f} / {delivered(c):,.0f} / {c.get('dropped', 0):,.0f}"


# ---------------------------------------------------------------- mode: feedback


def _response_ids(url: str, count: int) -> list[str]:
    body = json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ).encode()
    ids = []
    for n in range(count):
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=body.replace(b'"max_tokens"', f'"user": "u{n}", "max_tokens"'.encode()),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            ids.append(json.loads(answer.read())["id"])
    return ids


def mode_feedback(args: argparse.Namespace, folder: Path) -> None:
    """Feedback into Kafka beside the bare FastAPI+pydantic route, interleaved; read back."""
    broker = TansuBroker()
    broker.start()
    batch = args.batch
    try:
        with ExitStack() as stack:
            sim_port = free_port()
            stack.enter_context(started("sim", sim_cmd(sim_port), sim_port, "/health"))
            cmd = gateway_cmd(folder, "kafka", sim_port,
                              kafka_events(folder, "kafka", broker.bootstrap))  # fmt: skip
            if args.gateway_path:
                cmd = with_path(_first_on_path(args.gateway_path), cmd)
            gw = serve(stack, "kafka", cmd)
            ref = serve_reference(stack, sim_port)
            ids = _response_ids(gw.url, 200)
            kinds = ["thumbs_up", "thumbs_down", "accept", "regenerate"]
            single = [
                json.dumps({"response_id": rid, "kind": kinds[n % 4]}) for n, rid in enumerate(ids)
            ]
            batches = [
                json.dumps({"items": [json.loads(single[(b * batch + i) % len(single)])
                                      for i in range(batch)]})
                for b in range(10)
            ]  # fmt: skip
            variants: dict[str, Proc] = {}
            for variant in args.feedback_variant:
                name, path = _variant(variant)
                vcmd = gateway_cmd(folder, name, sim_port,
                                   kafka_events(folder, name, broker.bootstrap))  # fmt: skip
                variants[name] = serve(stack, name, with_path(path, vcmd))
            gateways = [gw, *variants.values()]
            before = [wait_drained(g.url) for g in gateways]  # the chat calls' events are in
            threads0, procs0 = thread_cpu(gw.proc.pid), tree_reading(gw.proc.pid)
            targets = {"gateway": (gw, True), **{n: (v, True) for n, v in variants.items()},
                       "reference": (ref, False)}  # fmt: skip
            for proc, is_gw in targets.values():  # warm up
                drive(proc, "/v1/feedback", single, 4, 1, is_gw)
                drive(proc, "/v1/feedback/batch", batches, 2, 1, is_gw, batch)
            loads: dict[tuple[str, str], list[Load]] = {}
            routes = (
                ("/v1/feedback", single, args.concurrency, 1),
                ("/v1/feedback/batch", batches, args.batch_concurrency, batch),
            )
            for _ in range(args.rounds):
                for route, bodies, conns, per in routes:
                    for name, (proc, is_gw) in targets.items():
                        loads.setdefault((route, name), []).append(
                            drive(proc, route, bodies, conns, args.duration, is_gw, per)
                        )
            afters = [wait_drained(g.url) for g in gateways]
            after = afters[0]
            feedback_total = sum(_feedback_recorded(g.url) for g in gateways)
            threads = thread_split(threads0, thread_cpu(gw.proc.pid))
            by_proc = process_split(procs0, tree_reading(gw.proc.pid))
        emitted = int(
            sum(
                a.get("emitted", 0) - b.get("emitted", 0)
                for a, b in zip(afters, before, strict=True)
            )
        )
        records, distinct = topic_event_ids(broker.bootstrap, FEEDBACK_TOPIC, emitted)
    finally:
        broker.kill()
    rows = []
    for (route, name), xs in loads.items():
        conns = args.batch_concurrency if route.endswith("batch") else args.concurrency
        for i, x in enumerate(xs):
            s = x.serving()
            rows.append([
                route, str(conns), name, str(i + 1), f"{x.ok / x.seconds:,.0f}",
                f"{x.items_per_s:,.0f}", f"{1e6 / s.cpu_us_per_item:,.0f}",
                f"{1e6 / x.cpu_us_per_item:,.0f}", f"{s.cpu_us_per_item:,.0f}",
                f"{x.cpu_us_per_item:,.0f}", str(x.errors),
            ])  # fmt: skip
    extra = f", gateway with {args.gateway_path} first on its path" if args.gateway_path else ""
    table(f"feedback, one worker, events to Kafka (batch = {batch} items){extra}; CPU of the "
          "serving process alone, and of the whole tree (with a producer child)",
          ["route", "conc", "server", "round", "calls/s", "items/s", "items/CPU-s serving",
           "items/CPU-s tree", "CPU us/item serving", "CPU us/item tree", "errors"],
          rows)  # fmt: skip

    def ratio(route: str, view: View, num: str = "gateway", den: str = "reference") -> list[float]:
        return _ratios(loads[(route, den)], loads[(route, num)], view)

    def rate(route: str) -> list[float]:
        return [x.items_per_s for x in loads[(route, "gateway")]]

    def per_cpu(route: str, view: View) -> list[float]:
        return [1e6 / view(x).cpu_us_per_item for x in loads[(route, "gateway")]]

    one, many = "/v1/feedback", "/v1/feedback/batch"
    table(f"targets; CPU: {BOTH}", ["figure", "measured", "target"], [
        ["one-item calls: events/s (wall; wrk shares the 2 cores)",
         rng(rate(one), "{:,.0f}"), ">= 5,000"],
        ["one-item calls: events per gateway CPU-second",
         _both(partial(per_cpu, one), "{:,.0f}"), "(>= 5,000 on a core of its own)"],
        ["one-item call CPU: gateway / bare route", _both(partial(ratio, one), "{:.2f}x"),
         "<= 0.5x"],
        ["batch: items/s (wall)", rng(rate(many), "{:,.0f}"), ">= 20,000"],
        ["batch: items per gateway CPU-second", _both(partial(per_cpu, many), "{:,.0f}"), ""],
        ["batch item CPU: gateway / bare route", _both(partial(ratio, many), "{:.2f}x"), ""],
        ["feedback recorded (metric) / events emitted", f"{feedback_total:,.0f} / {emitted:,}",
         "equal"],
        ["emitted / sent+spooled / dropped (whole run)", _counts(after), "all / 0"],
        ["feedback topic: records / distinct event ids", f"{records:,} / {distinct:,}",
         f"= emitted ({emitted:,})"],
    ])  # fmt: skip
    for name in variants:
        for route in (one, many):
            ratios = _both(partial(ratio, route, num=name, den="gateway"), "{:.2f}x")
            console.print(f"{route} CPU per item, {name} / gateway: {ratios} ({BOTH})")
    console.print(f"gateway CPU by process over the feedback loads: {by_proc}")
    console.print(f"gateway serving process CPU by thread over the feedback loads: {threads}")


def _feedback_recorded(url: str) -> float:
    """Sum of loopgate_feedback_total over its labels."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("loopgate_feedback_total{")
    )


# ---------------------------------------------------------------- mode: workers


def mode_workers(args: argparse.Namespace, folder: Path) -> None:
    """CPU per json request, --workers 2 (multiprocess metrics) vs 1, interleaved."""
    with ExitStack() as stack:
        sim_port = free_port()
        stack.enter_context(started("sim", sim_cmd(sim_port), sim_port, "/health"))
        gws = {
            f"w{n}": serve(
                stack, f"w{n}",
                [*gateway_cmd(folder, f"w{n}", sim_port, spool_events(folder, f"w{n}")),
                 "--workers", str(n)],
            )
            for n in (1, 2)
        }  # fmt: skip
        for variant in args.workers_variant:  # another --workers 2 gateway, DIR first on its path
            name, path = _variant(variant)
            cmd = gateway_cmd(folder, name, sim_port, spool_events(folder, name))
            gws[name] = serve(stack, name, with_path(path, [*cmd, "--workers", "2"]))
        bodies = chat_bodies()
        for gw in gws.values():
            drive(gw, "/v1/chat/completions", bodies, 4, 1, True)
        loads: dict[str, list[Load]] = {name: [] for name in gws}
        procs0 = tree_reading(gws["w2"].proc.pid)
        chat_rounds(gws, bodies, args, loads)
        counters = {name: wait_drained(gw.url) for name, gw in gws.items()}
        procs = {name: len(tree_pids(gw.proc.pid)) for name, gw in gws.items()}
        split = process_split(procs0, tree_reading(gws["w2"].proc.pid))
    counted = ", ".join(f"{name}: {n}" for name, n in procs.items())
    table(f"chat json c={args.concurrency}, events to the spool: --workers 1 vs 2 "
          f"(processes counted: {counted})",
          ["round", "gateway", "req/s", "CPU ms/req", "/ w1 CPU", "errors"],
          _round_rows(loads, "w1"))  # fmt: skip
    target_rows = [
        [f"{name} (--workers 2) / w1 CPU per request",
         rng(_ratios(loads["w1"], loads[name]), "{:.2f}x"), "<= 1.1x"]
        for name in loads if name != "w1"
    ]  # fmt: skip
    target_rows += [
        [f"{name}: emitted / spooled / dropped", _counts(c), "all / 0"]
        for name, c in counters.items()
    ]
    table("targets", ["figure", "measured", "target"], target_rows)
    console.print(f"--workers 2, CPU by process over the whole run: {split}")


# ---------------------------------------------------------------- mode: streams


@dataclass
class Wave:
    """N streams held open at once through one target."""

    streams: int
    errors: int = 0
    chunks: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    cpu_s: float = 0.0
    seconds: float = 0.0
    short: Wave | None = None  # the same streams with 2 tokens, for the marginal chunk cost

    @property
    def kib_per_stream(self) -> float:
        """RSS growth with every stream open, per stream."""
        return (self.rss_peak_kib - self.rss_before_kib) / self.streams

    @property
    def us_per_chunk(self) -> float:
        """Server CPU per chunk the client got, us (the request's own cost included)."""
        return self.cpu_s * 1e6 / max(self.chunks, 1)

    @property
    def us_per_extra_chunk(self) -> float:
        """Server CPU per chunk beyond a short answer's: the relay's own cost, us."""
        if self.short is None or self.chunks <= self.short.chunks:
            return float("nan")
        return (self.cpu_s - self.short.cpu_s) * 1e6 / (self.chunks - self.short.chunks)

    def p(self, q: float) -> float:
        """Inter-chunk gap quantile seen by the client, ms."""
        if not self.gaps_ms:
            return float("nan")
        return statistics.quantiles(self.gaps_ms, n=1000)[int(q * 1000) - 1]


async def _one_stream(port: int, body: bytes, wave: Wave, opened: list[int]) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        wave.errors += 1
        return
    try:
        writer.write(head + body)
        got = b""
        while b"\r\n\r\n" not in got:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed before the headers")
            got += data
        if not got.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(got[:40])
        first = True
        last = 0.0
        seen = got.count(b"data:")
        while True:
            if seen:
                now = time.perf_counter()
                if first:
                    opened[0] += 1
                    first = False
                elif last:
                    wave.gaps_ms.append((now - last) * 1000)
                last = now
                wave.chunks += seen
            if got.endswith(b"0\r\n\r\n") or b"[DONE]" in got:
                break
            got = await reader.read(65536)
            if not got:
                break
            seen = got.count(b"data:")
    except (OSError, ConnectionError):
        wave.errors += 1
    finally:
        writer.close()


async def _wave(port: int, pid: int | None, streams: int, tokens: int) -> Wave:
    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": tokens,
            "stream": True,
        }
    ).encode()
    wave = Wave(streams)
    opened = [0]
    if pid:
        wave.rss_before_kib = wave.rss_peak_kib = rss_kib(pid)
        cpu0 = cpu_seconds(pid)
    start = time.monotonic()
    tasks = []
    for n in range(streams):
        tasks.append(asyncio.create_task(_one_stream(port, body, wave, opened)))
        if n % 50 == 49:
            await asyncio.sleep(0)  # let the connections go out in groups
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.2)
        if pid:
            wave.rss_peak_kib = max(wave.rss_peak_kib, rss_kib(pid))
    wave.seconds = time.monotonic() - start
    if pid:
        wave.cpu_s = cpu_seconds(pid) - cpu0
    return wave


def mode_streams(args: argparse.Namespace, folder: Path) -> None:
    """N open slow streams: gateway vs reference vs direct, fresh servers each round."""
    import uvloop

    names = [v.partition("=")[0] for v in args.streams_variant]
    waves: dict[str, list[Wave]] = {n: [] for n in ["gateway", *names, "reference", "direct"]}
    counters: list[dict[str, float]] = []
    for _ in range(args.rounds):
        with ExitStack() as stack:
            sim_port = free_port()
            stack.enter_context(
                started("sim", sim_cmd(sim_port, args.itl, args.tokens), sim_port, "/health")
            )
            gw = serve(stack, "gateway",
                       gateway_cmd(folder, "gw", sim_port, spool_events(folder, "gw")))  # fmt: skip
            ref = serve_reference(stack, sim_port)
            targets: dict[str, tuple[int, int | None]] = {"gateway": (gw.port, gw.proc.pid)}
            for variant in args.streams_variant:
                name, path = _variant(variant)
                cmd = gateway_cmd(folder, name, sim_port, spool_events(folder, name))
                v = serve(stack, name, with_path(path, cmd))
                targets[name] = (v.port, v.proc.pid)
            targets.update({"reference": (ref.port, ref.proc.pid), "direct": (sim_port, None)})
            for port, pid in targets.values():  # warm up code paths and pools
                uvloop.run(_wave(port, pid, 20, 5))
            for name, (port, pid) in targets.items():
                # The long wave first: its RSS growth is from a process that never held N.
                waves[name].append(uvloop.run(_wave(port, pid, args.streams, args.tokens)))
                if pid:
                    waves[name][-1].short = uvloop.run(_wave(port, pid, args.streams, 2))
            counters.append(wait_drained(gw.url))
    rows = []
    for name, ws in waves.items():
        for i, w in enumerate(ws):
            per = f"{w.kib_per_stream:.1f}" if name != "direct" else "-"
            cpu = f"{w.us_per_chunk:.1f}" if name != "direct" else "-"
            extra = f"{w.us_per_extra_chunk:.1f}" if name != "direct" else "-"
            rows.append([
                name, str(i + 1), str(w.errors), f"{w.chunks:,}", f"{w.chunks / w.seconds:,.0f}",
                f"{w.p(0.5):.1f}", f"{w.p(0.99):.1f}", per, cpu, extra,
            ])  # fmt: skip
    table(f"{args.streams} open streams, sim {args.itl * 1000:.0f} ms between tokens, "
          f"{args.tokens} tokens, one worker; fresh servers each round",
          ["target", "round", "errors", "chunks", "chunks/s", "gap p50 ms", "gap p99 ms",
           "RSS KiB/stream", "CPU us/chunk", "us/extra chunk"], rows)  # fmt: skip
    g, r, d = waves["gateway"], waves["reference"], waves["direct"]
    table("targets", ["figure", "measured", "target"], [
        ["errors (gateway)", rng([float(w.errors) for w in g], "{:.0f}"), "0"],
        ["added inter-chunk p99 vs direct (gateway)",
         rng([a.p(0.99) - b.p(0.99) for a, b in zip(g, d, strict=True)], "{:.1f}") + " ms",
         "<= 2 ms"],
        ["added inter-chunk p99 vs direct (reference)",
         rng([a.p(0.99) - b.p(0.99) for a, b in zip(r, d, strict=True)], "{:.1f}") + " ms", ""],
        ["RSS per open stream, gateway (reference)",
         f"{rng([w.kib_per_stream for w in g], '{:.1f}')} "
         f"({rng([w.kib_per_stream for w in r], '{:.1f}')}) KiB", "<= 20 KiB"],
        ["CPU per relayed chunk, gateway (reference)",
         f"{rng([w.us_per_chunk for w in g], '{:.1f}')} "
         f"({rng([w.us_per_chunk for w in r], '{:.1f}')}) us", "(request cost included)"],
        ["CPU per extra chunk (vs a 2-token answer), gateway (reference)",
         f"{rng([w.us_per_extra_chunk for w in g], '{:.1f}')} "
         f"({rng([w.us_per_extra_chunk for w in r], '{:.1f}')}) us", "<= 10 us"],
        ["gateway / reference CPU per chunk",
         rng([a.us_per_chunk / b.us_per_chunk for a, b in zip(g, r, strict=True)], "{:.2f}x"), ""],
        *[[f"{n}: RSS KiB per stream; CPU us per chunk, per extra chunk",
           f"{rng([w.kib_per_stream for w in waves[n]], '{:.1f}')}; "
           f"{rng([w.us_per_chunk for w in waves[n]], '{:.1f}')}, "
           f"{rng([w.us_per_extra_chunk for w in waves[n]], '{:.1f}')}", ""] for n in names],
        *[[f"gateway / {n} CPU per chunk (per round)",
           rng([a.us_per_chunk / b.us_per_chunk for a, b in zip(g, waves[n], strict=True)],
               "{:.2f}x"), ""] for n in names],
        ["emitted / spooled / dropped (each round)",
         ", ".join(_counts(c) for c in counters), "all / 0"],
    ])  # fmt: skip


MODES = {"kafka": mode_kafka, "feedback": mode_feedback, "workers": mode_workers,
         "streams": mode_streams}  # fmt: skip


def producer_modes(text: str) -> list[str]:
    """`--producers`: a comma list of 'process' and 'thread', each once, in order."""
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not modes or not set(modes) <= {"process", "thread"}:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of process and thread")
    return modes


def main() -> None:
    """Parse the arguments and run one mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="items per feedback batch")
    parser.add_argument("--batch-concurrency", type=int, default=8)
    parser.add_argument(
        "--producers",
        type=producer_modes,
        default=["process"],
        metavar="process,thread",
        help="kafka: a Kafka gateway per events.kafka.producer mode, in the same rounds",
    )
    parser.add_argument("--kafka-variant", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument(
        "--workers-variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="workers: another --workers 2 gateway with DIR first on its PYTHONPATH",
    )
    parser.add_argument("--gateway-path", help="feedback: DIR first on the gateway's PYTHONPATH")
    parser.add_argument(
        "--feedback-variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="feedback: another gateway with DIR first on its PYTHONPATH, in the same rounds",
    )
    parser.add_argument(
        "--profile", action="store_true", help="gateways under cProfile (CPU figures invalid)"
    )
    parser.add_argument(
        "--streams-variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="streams: another gateway with DIR first on its PYTHONPATH, in the same rounds",
    )
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--itl", type=float, default=0.02, help="sim seconds between tokens")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    if str(ROOT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
    global PROFILE_ON
    PROFILE_ON = args.profile
    folder = Path(tempfile.mkdtemp(prefix="loopgate-bench-shape-"))
    try:
        MODES[args.mode](args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if SCRAPE_COST:
        costs = ", ".join(f"{sum(v.values()) * 1000:.0f} ms" for v in SCRAPE_COST.values())
        console.print(f"one /metrics scrape cost the gateways {costs} of CPU (idle; taken out)")
    print_profiles()


if __name__ == "__main__":
    main()
