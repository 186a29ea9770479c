"""Feedback into Kafka, and what logging completions costs the chat path.

Starts a zero-latency `loopgate sim`, a tansu broker and, one at a time, `loopgate serve`
(one worker) with events off, events to the spool, and events to Kafka. For each it drives
chat with wrk and measures req/s, p50/p99 and the gateway's CPU per request; with events on
it also makes chat calls for valid response ids and drives POST /v1/feedback with wrk
(a Lua script cycling over them): feedback accepted per second at the edge, and events per
second delivered (acknowledged by Kafka, or fsync'd to the spool) counting the drain after
the load. Prints the figures side by side and as ratios to events off; asserts nothing.

    .venv/bin/python -m loadtests.bench_feedback [--duration 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from loadtests.bench_gateway import PY, Run, cpu_seconds, free_port, started, wrk
from tests.support.kafka import TansuBroker

console = Console(width=150)  # wide tables, also when piped
MODES = ("off", "spool", "kafka")


@dataclass
class Feedback:
    """One feedback load: accepted at the edge, and delivered including the drain."""

    accepted_per_s: float
    errors: int
    delivered_per_s: float
    drain_s: float
    cpu_ms_per_event: float


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("loopgate_events_") or line.startswith("loopgate_spool_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _response_ids(port: int, count: int) -> list[str]:
    body = json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ).encode()
    ids = []
    for _ in range(count):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            ids.append(json.loads(answer.read())["id"])
    return ids


def wrk_feedback(port: int, ids: list[str], conns: int, duration: float, pid: int) -> Feedback:
    """POST thumbs_up on the ids round-robin; then wait for the pipeline to drain."""
    lua_ids = ", ".join(json.dumps(i) for i in ids)
    script = (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"local ids = {{{lua_ids}}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        '  local body = \'{"kind": "thumbs_up", "response_id": "\' .. ids[n % #ids + 1] .. \'"}\'\n'
        '  return wrk.format(nil, "/v1/feedback", nil, body)\n'
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    before = _metrics(port)
    cpu0, start = cpu_seconds(pid), time.monotonic()
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{max(1, round(duration))}s", "-s", handle.name,
           f"http://127.0.0.1:{port}/v1/feedback"]  # fmt: skip
    out = subprocess_out(cmd)
    loaded = time.monotonic()
    os.unlink(handle.name)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    accepted = requests - errors

    def delivered(m: dict[str, float]) -> float:
        return m["loopgate_events_sent_total"] + m["loopgate_events_spooled_total"]

    deadline = loaded + 120
    while delivered(_metrics(port)) - delivered(before) < accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    done = time.monotonic()
    cpu = cpu_seconds(pid) - cpu0
    return Feedback(
        accepted_per_s=accepted / (loaded - start),
        errors=errors,
        delivered_per_s=(delivered(_metrics(port)) - delivered(before)) / (done - start),
        drain_s=done - loaded,
        cpu_ms_per_event=cpu * 1000 / max(accepted, 1),
    )


def subprocess_out(cmd: list[str]) -> str:
    """stdout of a command that must succeed."""
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def gateway_config(mode: str, folder: Path, sim_port: int, bootstrap: str) -> dict[str, Any]:
    """The same gateway with events off, to the spool, or to Kafka."""
    events: dict[str, Any] = {"spool": {"dir": str(folder / f"spool-{mode}")}}
    if mode == "off":
        events = {"enabled": False}
    elif mode == "kafka":
        events["kafka"] = {"bootstrap_servers": [bootstrap]}
    return {
        "pools": {
            "bench": {"endpoints": [f"http://127.0.0.1:{sim_port}"], "served_model": "bench"}
        },
        "models": {"bench": {"pool": "bench"}},
        "events": events,
    }


def main() -> None:
    """Run each mode in turn and print the table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ids", type=int, default=200, help="answers to give feedback on")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    sim_port = free_port()
    sim_cmd = [
        PY, "-m", "cli", "sim", "--port", str(sim_port), "--model", "bench",
        "--ttft", "0", "--itl", "0", "--output-tokens", "16", "--jitter", "0",
        "--max-num-seqs", "100000",
    ]  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="loopgate-bench-feedback-"))
    broker = TansuBroker()
    broker.start()
    chat: dict[str, Run] = {}
    feedback: dict[str, Feedback] = {}
    counters: dict[str, dict[str, float]] = {}
    try:
        with started("sim", sim_cmd, sim_port, "/health"):
            for mode in MODES:
                port = free_port()
                path = folder / f"gateway-{mode}.yaml"
                path.write_text(yaml.safe_dump(gateway_config(mode, folder, sim_port,
                                                              broker.bootstrap)))  # fmt: skip
                cmd = [PY, "-m", "cli", "serve", "--config", str(path), "--port",
                       str(port), "--log-level", "warning"]  # fmt: skip
                with started(mode, cmd, port, "/healthz") as gw:
                    pid = gw.proc.pid
                    wrk(gw.url, "bench", False, 4, 1, pid)  # warm up (and create topics)
                    chat[mode] = wrk(gw.url, "bench", False, args.concurrency, args.duration, pid)
                    if mode != "off":
                        ids = _response_ids(port, args.ids)
                        feedback[mode] = wrk_feedback(
                            port, ids, args.concurrency, args.duration, pid
                        )
                        counters[mode] = _metrics(port)
    finally:
        broker.kill()
        shutil.rmtree(folder, ignore_errors=True)
    report(chat, feedback, counters, args.concurrency)


def report(
    chat: dict[str, Run],
    feedback: dict[str, Feedback],
    counters: dict[str, dict[str, float]],
    conns: int,
) -> None:
    """Chat with events off/spool/Kafka side by side, then feedback throughput."""
    off = chat["off"]
    table = Table(title=f"chat, json, c={conns}, one worker: cost of logging completions")
    for col in ("events", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors",
                "req/s vs off", "p50 vs off", "p99 vs off", "CPU vs off"):  # fmt: skip
        table.add_column(col, justify="right")
    for mode in MODES:
        r = chat[mode]
        cpu, cpu_off = r.cpu_ms_per_req or 0.0, off.cpu_ms_per_req or 1.0
        table.add_row(
            mode, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{cpu:.3f}",
            str(r.errors), f"{r.rps / off.rps:.2f}x", f"{r.p50_ms / off.p50_ms:.2f}x",
            f"{r.p99_ms / off.p99_ms:.2f}x", f"{cpu / cpu_off:.2f}x",
        )  # fmt: skip
    console.print(table)
    fb = Table(title=f"POST /v1/feedback, c={conns}, one worker")
    for col in ("events to", "accepted/s", "errors", "delivered/s (with drain)", "drain s",
                "CPU ms/event", "sent", "spooled", "dropped"):  # fmt: skip
        fb.add_column(col, justify="right")
    for mode, f in feedback.items():
        c = counters[mode]
        fb.add_row(
            mode, f"{f.accepted_per_s:,.0f}", str(f.errors), f"{f.delivered_per_s:,.0f}",
            f"{f.drain_s:.2f}", f"{f.cpu_ms_per_event:.3f}",
            f"{c.get('loopgate_events_sent_total', 0):.0f}",
            f"{c.get('loopgate_events_spooled_total', 0):.0f}",
            f"{c.get('loopgate_events_dropped_total', 0):.0f}",
        )  # fmt: skip
    console.print(fb)


if __name__ == "__main__":
    main()
