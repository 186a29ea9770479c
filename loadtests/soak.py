"""Soak: steady load through the gateway for minutes; RSS and open fds over time must level off.

Starts a zero-latency `loopgate sim` and `loopgate serve` (keys, rate limits in local buckets,
events to a spool in a temporary folder), drives a steady mix of streamed and whole answers
and feedback at a fixed rate, and prints the gateway's RSS and open file descriptors every
interval, then the growth over the second half of the run (which should be about zero).

    .venv/bin/python loadtests/soak.py [--minutes 5] [--rate 100] [--interval 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import yaml

PY = sys.executable
KEY = "lgk-soak-0123456789"


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 30) -> None:
    """Poll url until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def load(
    url: str,
    rate: float,
    seconds: float,
    samples: list[tuple[float, float, int]],
    pid: int,
    interval: float,
) -> int:
    """Send `rate` requests a second for `seconds`, sampling the gateway every `interval`."""
    from gateway.auth import hash_secret  # noqa: F401  (the key below is in the config)

    headers = {"Authorization": f"Bearer {KEY}"}
    sent = 0
    failures = 0
    pending: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:

        async def one(i: int) -> None:
            nonlocal failures
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": f"question {i} from soak"}],
                "user": f"user-{i % 5000}",  # many units: caches must stay bounded
                "stream": i % 2 == 0,
                "max_tokens": 16,
            }
            answer = await http.post("/v1/chat/completions", json=body)
            if answer.status_code != 200:
                failures += 1
                return
            if i % 5 == 0 and not body["stream"]:
                fb = {
                    "response_id": answer.json()["id"],
                    "kind": "thumbs_up",
                    "idempotency_key": f"k{i}",
                }
                if (await http.post("/v1/feedback", json=fb)).status_code != 200:
                    failures += 1

        start = time.monotonic()
        next_sample = start
        while (now := time.monotonic()) - start < seconds:
            if now >= next_sample:
                samples.append((now - start, rss_mb(pid), open_fds(pid)))
                print(
                    f"{now - start:7.0f}s  rss {samples[-1][1]:7.1f} MiB  fds {samples[-1][2]:4d}"
                    f"  sent {sent}  failures {failures}",
                    flush=True,
                )
                next_sample += interval
            task = asyncio.create_task(one(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        await asyncio.gather(*pending)
    return failures


def main() -> None:
    """Run the soak and print the growth."""
    from gateway.auth import hash_secret

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--interval", type=float, default=15)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="loopgate-soak-") as folder:
        try:
            sim_port, gw_port = free_port(), free_port()
            procs.append(
                subprocess.Popen(
                    [
                        PY,
                        "-m",
                        "cli",
                        "sim",
                        "--port",
                        str(sim_port),
                        "--model",
                        "m",
                        "--ttft",
                        "0",
                        "--itl",
                        "0",
                        "--output-tokens",
                        "16",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_http(f"http://127.0.0.1:{sim_port}/health")
            config = {
                "pools": {
                    "p": {"endpoints": [f"http://127.0.0.1:{sim_port}"], "served_model": "m"}
                },
                "models": {"m": {"pool": "p"}},
                "events": {"spool": {"dir": str(Path(folder) / "spool")}},
                "auth": {
                    "keys": [
                        {
                            "hash": hash_secret(KEY),
                            "app_id": "soak",
                            "limits": {"rpm": 10**7, "tpm": 10**9},
                        }
                    ]
                },
            }
            path = Path(folder) / "config.yaml"
            path.write_text(yaml.safe_dump(config))
            gw = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "cli",
                    "serve",
                    "--config",
                    str(path),
                    "--port",
                    str(gw_port),
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(gw)
            url = f"http://127.0.0.1:{gw_port}"
            wait_http(url + "/healthz")
            samples: list[tuple[float, float, int]] = []
            failures = asyncio.run(
                load(url, args.rate, args.minutes * 60, samples, gw.pid, args.interval)
            )
            half = [s for s in samples if s[0] >= samples[-1][0] / 2]
            first, last = half[0], half[-1]
            hours = max(1e-9, (last[0] - first[0]) / 3600)
            print(f"failures: {failures}")
            print(
                f"second half: rss {first[1]:.1f} -> {last[1]:.1f} MiB "
                f"({(last[1] - first[1]) / hours:+.1f} MiB/h), fds {first[2]} -> {last[2]}"
            )
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
