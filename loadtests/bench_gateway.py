"""Gateway overhead, measured side by side in one run.

Starts a zero-latency `loopgate sim`, a bare FastAPI+aiohttp pass-through (the reference),
and `loopgate serve` (one worker each), then drives each with wrk at several concurrencies,
streaming and not. Prints throughput and p50/p99, the ratios, the added latency, the added
time to first byte of a stream, and each proxy's CPU time per request (user+sys of its
process over the measured window, divided by requests: the figure least disturbed by a
noisy machine). Everything runs on loopback and stops by itself.

    .venv/bin/python loadtests/bench_gateway.py [--duration 5] [--concurrency 1,16,64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
console = Console()


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of a process (its own, not its reaped children's), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Proc:
    """A server this benchmark started."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


@contextmanager
def started(name: str, cmd: list[str], port: int, health: str) -> Iterator[Proc]:
    """Run a server for the duration of the block; stop it by its pid."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        _wait_http(f"http://127.0.0.1:{port}{health}")
        yield Proc(name, port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Run:
    """One wrk measurement."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_ms_per_req: float | None


def wrk(url: str, model: str, stream: bool, conns: int, duration: float, pid: int | None) -> Run:
    """Drive one endpoint with wrk; measure the proxy's CPU over the same window."""
    body = {
        "model": model,
        "user": "USER",
        "messages": [{"role": "user", "content": "Tell me about parcels and delivery times."}],
        "max_tokens": 16,
        "stream": stream,
    }
    head, tail = json.dumps(body).split('"USER"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        # A thousand distinct users, so flag assignment hashes real units.
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            "local n = 0\n"
            "request = function()\n"
            "  n = n + 1\n"
            f"  return wrk.format(nil, nil, nil, {json.dumps(head)} .. "
            f"'\"u' .. (n % 1000) .. '\"' .. {json.dumps(tail)})\n"
            "end\n"
        )
    threads = 1 if conns < 4 else 2
    cmd = [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency",
        "-s", script.name,
        url + "/v1/chat/completions",
    ]  # fmt: skip
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu1 = cpu_seconds(pid) if pid else 0.0
    os.unlink(script.name)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    dist = out.split("Latency Distribution", 1)[1]
    p50 = _ms(re.search(r"50%\s+(\S+)", dist).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", dist).group(1))  # type: ignore[union-attr]
    cpu = (cpu1 - cpu0) * 1000 / requests if pid and requests else None
    return Run(rps, p50, p99, requests, errors, cpu)


def ttfb_ms(port: int, model: str, count: int) -> float:
    """Median time to the first byte of a streamed answer's body at concurrency 1."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 16,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    samples = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(head + body)
            got = b""
            while b"data:" not in got:
                got += sock.recv(65536)
            samples.append((time.perf_counter() - start) * 1000)
            while not got.endswith(b"0\r\n\r\n"):  # read to the end of the chunked body
                got += sock.recv(65536)
    return statistics.median(samples[count // 10 :])


def bench_config(folder: Path, sim_port: int, events: dict[str, Any]) -> dict[str, Any]:
    """The gateway config every gateway benchmark measures: everything on. The model apps ask
    for is a flag split between two policy versions (two pools, both on the one simulator),
    so every request is hashed and routed. Writes the flag file into `folder`."""
    endpoint = {"endpoints": [f"http://127.0.0.1:{sim_port}"], "served_model": "bench"}
    flag = {
        "salt": "bench",
        "control": "a",
        "variants": [
            {"name": "a", "pool": "policy-a", "served_model": "bench", "weight": 50},
            {"name": "b", "pool": "policy-b", "served_model": "bench", "weight": 50},
        ],
    }
    (folder / "flags.yaml").write_text(yaml.safe_dump({"bench": flag}))
    return {
        "pools": {"policy-a": endpoint, "policy-b": endpoint},
        "models": {"policy-a": {"pool": "policy-a"}, "policy-b": {"pool": "policy-b"}},
        "flags": {"source": "file", "path": str(folder / "flags.yaml")},
        "events": events,
    }


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--ttfb-requests", type=int, default=300)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    levels = [int(c) for c in args.concurrency.split(",")]

    sim_port, ref_port, gw_port = free_port(), free_port(), free_port()
    sim_cmd = [
        PY, "-m", "cli", "sim", "--port", str(sim_port), "--model", "bench",
        "--ttft", "0", "--itl", "0", "--output-tokens", "16", "--jitter", "0",
        "--max-num-seqs", "100000",
    ]  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="loopgate-bench-"))
    config = bench_config(folder, sim_port, {"spool": {"dir": str(folder / "spool")}})
    config_path = folder / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    gw_cmd = [
        PY, "-m", "cli", "serve", "--config", str(config_path), "--port", str(gw_port),
        "--log-level", "warning",
    ]  # fmt: skip
    ref_cmd = [PY, str(ROOT / "loadtests/reference_passthrough.py"), str(ref_port),
               f"http://127.0.0.1:{sim_port}"]  # fmt: skip

    results: dict[tuple[str, bool, int], Run] = {}
    ttfb: dict[str, float] = {}
    with (
        started("sim", sim_cmd, sim_port, "/health") as sim,
        started("reference", ref_cmd, ref_port, "/docs") as ref,
        started("gateway", gw_cmd, gw_port, "/healthz") as gw,
    ):
        targets = [
            ("direct", sim, None),
            ("reference", ref, ref.proc.pid),
            ("gateway", gw, gw.proc.pid),
        ]
        for _, target, pid in targets:  # warm up connections and code paths
            wrk(target.url, "bench", False, 4, 1, pid)
        for stream in (False, True):
            for conns in levels:
                for name, target, pid in targets:
                    results[(name, stream, conns)] = wrk(
                        target.url, "bench", stream, conns, args.duration, pid
                    )
        for name, target, _ in targets:
            ttfb[name] = ttfb_ms(target.port, "bench", args.ttfb_requests)
        time.sleep(0.5)  # the last batch of events reaches the spool
        events = event_counts(gw.url)
    shutil.rmtree(folder, ignore_errors=True)
    report(results, ttfb, levels, events)


def event_counts(url: str) -> dict[str, float]:
    """The gateway's event pipeline counters: a faster gateway that drops events is no faster."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return {
        name: samples.get(f"loopgate_events_{name}_total", float("nan"))
        for name in ("emitted", "spooled", "dropped")
    }


def report(
    results: dict[tuple[str, bool, int], Run],
    ttfb: dict[str, float],
    levels: list[int],
    events: dict[str, float],
) -> None:
    """Print the measurements and the ratios the targets are stated in."""
    table = Table(title="Loopgate vs direct vs bare FastAPI+aiohttp pass-through (one worker each)")
    for col in ("mode", "conc", "target", "req/s", "p50 ms", "p99 ms", "errors", "CPU ms/req"):
        table.add_column(col, justify="right")
    for stream in (False, True):
        for conns in levels:
            for name in ("direct", "reference", "gateway"):
                r = results[(name, stream, conns)]
                cpu = f"{r.cpu_ms_per_req:.3f}" if r.cpu_ms_per_req is not None else "-"
                table.add_row(
                    "stream" if stream else "json", str(conns), name, f"{r.rps:,.0f}",
                    f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors), cpu,
                )  # fmt: skip
    console.print(table)

    top = max(levels)
    ratios = Table(title="Ratios and targets")
    for col in ("figure", "measured", "target"):
        ratios.add_column(col)
    g, d, ref = (results[(n, False, top)] for n in ("gateway", "direct", "reference"))
    g1, d1 = results[("gateway", False, min(levels))], results[("direct", False, min(levels))]
    gs, rs = results[("gateway", True, top)], results[("reference", True, top)]
    rows = [
        (f"gateway / reference req/s, json, c={top}", f"{g.rps / ref.rps:.2f}x", ">= 1.2x"),
        (f"gateway / reference req/s, stream, c={top}", f"{gs.rps / rs.rps:.2f}x", ""),
        (f"gateway / direct req/s, json, c={top}", f"{g.rps / d.rps:.2f}x", ""),
        ("gateway CPU per json request", f"{g.cpu_ms_per_req or 0:.3f} ms", "<= 0.35 ms"),
        ("reference CPU per json request", f"{ref.cpu_ms_per_req or 0:.3f} ms", ""),
        (f"added p50, json, c={min(levels)}", f"{g1.p50_ms - d1.p50_ms:.3f} ms", "<= 0.4 ms"),
        ("added time to first byte, stream, c=1",
         f"{ttfb['gateway'] - ttfb['direct']:.3f} ms", "<= 0.5 ms"),
        ("reference added time to first byte", f"{ttfb['reference'] - ttfb['direct']:.3f} ms", ""),
        ("completion events emitted / spooled",
         f"{events['emitted']:,.0f} / {events['spooled']:,.0f}", "all"),
        ("completion events dropped", f"{events['dropped']:,.0f}", "0"),
    ]  # fmt: skip
    for row in rows:
        ratios.add_row(*row)
    console.print(ratios)


if __name__ == "__main__":
    main()
