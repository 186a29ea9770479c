"""Load-aware endpoint choice against round-robin, measured side by side in one run.

Starts three `loopgate sim` endpoints of one pool, one of them slow (10x the latency and a
small batch, so it queues), and one `loopgate serve` per strategy over the same three. Drives
each gateway with the same closed-loop load (N concurrent clients) and prints p50/p99 latency,
the share of requests the slow endpoint got, and the ratio of round-robin's p99 to ours.
Everything runs on loopback and stops by itself.

    .venv/bin/python loadtests/bench_balancer.py [--requests 400] [--concurrency 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import yaml

PY = sys.executable
FAST = {"ttft": 0.02, "itl": 0.002, "max_num_seqs": 64}
SLOW = {"ttft": 0.2, "itl": 0.02, "max_num_seqs": 4}


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll url until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_sim(profile: dict[str, float]) -> tuple[subprocess.Popen[bytes], str]:
    """A simulator with this latency profile."""
    port = free_port()
    args = [PY, "-m", "cli", "sim", "--port", str(port), "--model", "m"]
    args += ["--output-tokens", "16", "--jitter", "0"]
    for name, value in profile.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc)
    return proc, url


def start_gateway(
    urls: list[str], strategy: str, folder: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """A gateway over the three endpoints with this strategy."""
    port = free_port()
    config = {
        "pools": {"p": {"endpoints": urls, "served_model": "m"}},
        "models": {"m": {"pool": "p"}},
        "events": {"enabled": False},
        "balancer": {"strategy": strategy, "metrics_interval_s": 1.0},
    }
    path = folder / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [PY, "-m", "cli", "serve", "--config", str(path), "--port", str(port)]
    args += ["--log-level", "warning"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return proc, url


async def drive(url: str, requests: int, concurrency: int) -> tuple[list[float], int]:
    """Closed loop: `concurrency` clients, `requests` in all; latencies and non-200 count."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
    latencies: list[float] = []
    errors = 0
    left = requests
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                started = time.perf_counter()
                answer = await http.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - started)
                errors += answer.status_code != 200

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors


def received(url: str) -> int:
    """Requests a simulator has received."""
    import json

    with urllib.request.urlopen(url + "/sim/stats", timeout=5) as answer:
        count: int = json.loads(answer.read())["received"]
        return count


def pct(values: list[float], q: float) -> float:
    """The q-quantile, in ms."""
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] * 1000


def main() -> None:
    """Run both strategies and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=12)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sims = [start_sim(FAST), start_sim(FAST), start_sim(SLOW)]
        procs += [p for p, _ in sims]
        urls = [u for _, u in sims]
        slow_url = urls[2]
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench-balancer-") as folder:
            for strategy in ("round_robin", "load_aware"):
                proc, url = start_gateway(urls, strategy, Path(folder))
                procs.append(proc)
                asyncio.run(drive(url, 30, args.concurrency))  # warm up connections
                before = received(slow_url)
                lat, errors = asyncio.run(drive(url, args.requests, args.concurrency))
                share = (received(slow_url) - before) / args.requests
                rows.append((strategy, pct(lat, 0.5), pct(lat, 0.99), share, errors))
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
        print(
            f"{args.requests} requests, {args.concurrency} concurrent; endpoints: 2 fast "
            f"(ttft {FAST['ttft']}s), 1 slow (ttft {SLOW['ttft']}s, batch {SLOW['max_num_seqs']})"
        )
        print(f"{'strategy':<12} {'p50 ms':>8} {'p99 ms':>8} {'to slow':>8} {'errors':>7}")
        for name, p50, p99, share, errors in rows:
            print(f"{name:<12} {p50:8.1f} {p99:8.1f} {share:8.1%} {errors:7d}")
        ratio = rows[0][2] / rows[1][2]
        print(f"p99 round-robin / load-aware: {ratio:.1f}x")
    finally:
        stop_all(procs)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """End the processes this benchmark started (SIGTERM, then SIGKILL after 10 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
