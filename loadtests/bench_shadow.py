"""The primary's latency with no shadow, a healthy one, a slow one and a dead one, in one run.

Starts one `loopgate serve` over a control simulator and three shadow pools: a healthy
simulator, a slow one (10 s to the first token) and a closed port. Four flags send all their
traffic to the control variant; three of them mirror every request (share 1.0) to one of the
shadow pools. The same closed-loop load drives each flag in interleaved rounds, and the table
gives the primary's p50/p99, errors, and the ratio of each p50/p99 to the no-shadow flag's,
beside what the shadows did (answered, dropped by reason). Loopback only; stops by itself.

    .venv/bin/python loadtests/bench_shadow.py [--requests 400] [--concurrency 8] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.bench_balancer import (
    PY,
    free_port,
    pct,
    received,
    start_sim,
    stop_all,
    wait_http,
)

CONTROL = {"ttft": 0.02, "itl": 0.002, "max_num_seqs": 64}
SLOW = {"ttft": 10.0, "itl": 0.002, "max_num_seqs": 256}
FLAGS = {"none": None, "healthy": "healthy", "slow": "slow", "dead": "dead"}


def flag(key: str, shadow_pool: str | None) -> dict[str, Any]:
    """All traffic on control; `candidate` (weight 0) on `shadow_pool` mirrors all of it."""
    doc: dict[str, Any] = {
        "key": key,
        "control": "control",
        "variants": [{"name": "control", "pool": "control", "weight": 100}],
    }
    if shadow_pool is not None:
        doc["variants"].append({"name": "candidate", "pool": shadow_pool, "weight": 0})
        doc["shadow"] = {"variant": "candidate", "share": 1.0, "max_in_flight": 32}
    return doc


def start_gateway(pools: dict[str, str], folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One gateway with the four flags."""
    flags = folder / "flags.yaml"
    flags.write_text(yaml.safe_dump({"flags": [flag(k, p) for k, p in FLAGS.items()]}))
    config = {
        "pools": {name: {"endpoints": [url], "served_model": "m"} for name, url in pools.items()},
        "flags": {"source": "file", "path": str(flags)},
        "events": {"enabled": False},
        "balancer": {"probe_timeout_s": 5.0},
    }
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    args = [PY, "-m", "cli", "serve", "--config", str(path), "--port", str(port)]
    args += ["--log-level", "error"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return proc, url


async def drive(
    url: str, model: str, requests: int, concurrency: int, users: itertools.count[int]
) -> tuple[list[float], int]:
    """Closed loop on one flag: latencies of the primaries and their non-200 count."""
    latencies: list[float] = []
    errors = 0
    left = requests
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 16,
                    "user": f"u{next(users)}",
                }
                started = time.perf_counter()
                answer = await http.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - started)
                errors += answer.status_code != 200

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors


def shadow_counts(url: str) -> dict[tuple[str, str], float]:
    """(flag, what) -> count: shadow requests answered, and drops by reason."""
    with httpx.Client(timeout=10) as http:
        text = http.get(url + "/metrics").text
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("loopgate_shadow_dropped_total{") or (
            name.startswith("loopgate_requests_total{")
            and 'role="shadow"' in name
            and 'status="200"' in name
        ):
            labels = dict(
                part.split("=", 1) for part in name.split("{", 1)[1].rstrip("}").split(",")
            )
            flag_key = labels["flag"].strip('"')
            what = labels.get("reason", '"answered"').strip('"')
            out[(flag_key, what)] = out.get((flag_key, what), 0.0) + float(value)
    return out


def main() -> None:
    """Drive the four flags in interleaved rounds; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per flag")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    began = time.monotonic()
    try:
        control, control_url = start_sim(CONTROL)
        healthy, healthy_url = start_sim(CONTROL)
        slow, slow_url = start_sim(SLOW)
        procs += [control, healthy, slow]
        pools = {
            "control": control_url,
            "healthy": healthy_url,
            "slow": slow_url,
            "dead": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        }
        with tempfile.TemporaryDirectory(prefix="bench-shadow-") as folder:
            proc, url = start_gateway(pools, Path(folder))
            procs.append(proc)
            users = itertools.count()
            for key in FLAGS:  # warm up connections
                asyncio.run(drive(url, key, 20, args.concurrency, users))
            latencies: dict[str, list[float]] = {key: [] for key in FLAGS}
            errors = dict.fromkeys(FLAGS, 0)
            per_round = max(1, args.requests // args.rounds)
            for _ in range(args.rounds):
                for key in FLAGS:
                    lat, failed = asyncio.run(drive(url, key, per_round, args.concurrency, users))
                    latencies[key] += lat
                    errors[key] += failed
            time.sleep(1.0)  # let the healthy shadows finish
            counts = shadow_counts(url)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        total = per_round * args.rounds
        print(
            f"{total} primaries per flag in {args.rounds} interleaved rounds, "
            f"{args.concurrency} concurrent; control ttft {CONTROL['ttft']}s; shadow share 1.0, "
            f"max_in_flight 32; slow shadow ttft {SLOW['ttft']}s; "
            f"healthy shadow pool received {received(healthy_url)}, slow {received(slow_url)}"
        )
        base50 = pct(latencies["none"], 0.5)
        base99 = pct(latencies["none"], 0.99)
        head = f"{'shadow':<8} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>6} {'p99 x':>6} {'errors':>6}"
        print(head + "  shadows (answered / dropped by reason)")
        for key in FLAGS:
            p50, p99 = pct(latencies[key], 0.5), pct(latencies[key], 0.99)
            mine = {what: n for (f, what), n in counts.items() if f == key and n}
            shown = ", ".join(f"{what} {n:.0f}" for what, n in sorted(mine.items())) or "-"
            print(
                f"{key:<8} {p50:8.2f} {p99:8.2f} {p50 / base50:6.2f} {p99 / base99:6.2f} "
                f"{errors[key]:6d}  {shown}"
            )
        print(f"wall time {time.monotonic() - began:.0f}s")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
