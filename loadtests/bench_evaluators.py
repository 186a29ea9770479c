"""What online evaluators cost the chat path, healthy, dead and stalled.

Starts a zero-latency `loopgate sim` as the policy and, one at a time, `loopgate serve` (one
worker, events to a spool) with no evaluator; a reward model scoring every answer on a
healthy sim; the same on a port nobody listens on (dead); and on a sim that never answers
(stalled, so every score waits out its timeout and the queue overflows). For each it drives
chat with wrk and prints req/s, p50/p99, errors and the gateway's CPU per request, side by
side and as ratios to "none", with the evaluations done, failed and dropped. Asserts nothing.

    .venv/bin/python -m loadtests.bench_evaluators [--duration 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from loadtests.bench_gateway import PY, Run, free_port, started, wrk

console = Console(width=150)
MODES = ("none", "healthy", "dead", "stalled")


def _sim_cmd(port: int, model: str, *extra: str) -> list[str]:
    return [
        PY, "-m", "cli", "sim", "--port", str(port), "--model", model,
        "--ttft", "0", "--itl", "0", "--output-tokens", "16", "--jitter", "0",
        "--max-num-seqs", "100000", *extra,
    ]  # fmt: skip


def _outcomes(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out = {"done": 0.0, "failed": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        if line.startswith("loopgate_evaluations_total{"):
            for outcome in out:
                if f'outcome="{outcome}"' in line:
                    out[outcome] += float(line.rsplit(" ", 1)[1])
    return out


def gateway_config(mode: str, folder: Path, policy: int, scorer: int | None) -> dict[str, Any]:
    """The same gateway with no evaluator, or a reward model on a healthy, dead or stalled pool."""
    config: dict[str, Any] = {
        "pools": {"bench": {"endpoints": [f"http://127.0.0.1:{policy}"], "served_model": "bench"}},
        "models": {"bench": {"pool": "bench"}},
        "events": {"spool": {"dir": str(folder / f"spool-{mode}")}},
    }
    if mode != "none":
        config["pools"]["rm"] = {
            "endpoints": [f"http://127.0.0.1:{scorer}"],
            "served_model": "rm",
            "timeouts": {"connect": 0.5, "first_byte": 2.0, "total": 2.0},
        }
        config["evaluators"] = {
            "reward": {
                "kind": "reward_model", "pool": "rm", "sample_rate": 1.0,
                "per_minute": 1_000_000, "concurrency": 8, "queue_size": 1000, "timeout_s": 1.0,
            }
        }  # fmt: skip
    return config


def main() -> None:
    """Run each mode in turn and print the table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="loopgate-bench-evaluators-"))
    policy, healthy, stalled, dead = free_port(), free_port(), free_port(), free_port()
    scorers = {"none": None, "healthy": healthy, "dead": dead, "stalled": stalled}
    chat: dict[str, Run] = {}
    outcomes: dict[str, dict[str, float]] = {}
    try:
        with ExitStack() as stack:
            stack.enter_context(started("policy", _sim_cmd(policy, "bench"), policy, "/health"))
            stack.enter_context(started("rm", _sim_cmd(healthy, "rm"), healthy, "/health"))
            stalled_cmd = _sim_cmd(stalled, "rm", "--stall-rate", "1")
            stack.enter_context(started("stalled", stalled_cmd, stalled, "/health"))
            for mode in MODES:
                port = free_port()
                path = folder / f"gateway-{mode}.yaml"
                path.write_text(yaml.safe_dump(gateway_config(mode, folder, policy, scorers[mode])))
                cmd = [PY, "-m", "cli", "serve", "--config", str(path), "--port",
                       str(port), "--log-level", "error"]  # fmt: skip
                with started(mode, cmd, port, "/healthz") as gw:
                    pid = gw.proc.pid
                    wrk(gw.url, "bench", False, 4, 1, pid)  # warm up
                    chat[mode] = wrk(gw.url, "bench", False, args.concurrency, args.duration, pid)
                    outcomes[mode] = _outcomes(port)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(chat, outcomes, args.concurrency)


def report(chat: dict[str, Run], outcomes: dict[str, dict[str, float]], conns: int) -> None:
    """The four modes side by side, with ratios to no evaluator."""
    base = chat["none"]
    table = Table(title=f"chat, json, c={conns}, one worker: a reward model scoring every answer")
    for col in ("evaluator", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors",
                "req/s vs none", "p50 vs none", "p99 vs none", "CPU vs none",
                "done", "failed", "dropped"):  # fmt: skip
        table.add_column(col, justify="right")
    for mode in MODES:
        r, o = chat[mode], outcomes[mode]
        cpu, cpu_base = r.cpu_ms_per_req or 0.0, base.cpu_ms_per_req or 1.0
        table.add_row(
            mode, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{cpu:.3f}",
            str(r.errors), f"{r.rps / base.rps:.2f}x", f"{r.p50_ms / base.p50_ms:.2f}x",
            f"{r.p99_ms / base.p99_ms:.2f}x", f"{cpu / cpu_base:.2f}x",
            f"{o['done']:.0f}", f"{o['failed']:.0f}", f"{o['dropped']:.0f}",
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
