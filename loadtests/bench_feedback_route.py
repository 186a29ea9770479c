"""The feedback routes' own CPU, in process: ASGI calls straight into the server app.

No sockets, no HTTP parsing, no Kafka: a gateway app (HotPath) with events to a spool, called
with ready-made ASGI scopes, so what is left is the route (auth, body, validation, id check,
the event handed to the pipeline, the answer) and the pipeline's own work on the loop (each
round waits until the pipeline has spooled all it was given). CPU is process time (every
thread) per item over N calls, the best of 3. `--profile one-item|batch`: cProfile of that
load by thread CPU time (its overhead inflates small calls). For an A/B, run it twice:
once as it is and once with the other code first on PYTHONPATH, and -P so that the
checkout itself does not come first (as bench_shape's --feedback-variant does). Indicative.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.bench_feedback_route --label new
    PYTHONPATH=OLD_DIR:$PWD .venv/bin/python -P -m loadtests.bench_feedback_route --label old
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.app import HotPath, create_server_app
from gateway.ids import Claims, ResponseIdSigner
from gateway.settings import load_settings

KEY = "b" * 40
KINDS = ["thumbs_up", "thumbs_down", "accept", "regenerate"]


def _server(folder: Path) -> HotPath:
    config = {
        "pools": {"a": {"endpoints": ["http://127.0.0.1:9"], "served_model": "m"}},
        "models": {"m": {"pool": "a"}},
        "ids": {"keys": [KEY], "max_age_s": 3600},
        "events": {"spool": {"dir": str(folder / "spool")}},
    }
    (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
    return create_server_app(load_settings(folder / "gateway.yaml"))


def _bodies(count: int) -> list[bytes]:
    """One-item bodies for ids of the anonymous app (`default`), as bench_shape sends."""
    signer = ResponseIdSigner([KEY.encode()])
    now = int(time.time())
    # Real unit hashes of 200 users (as bench_shape): the pipeline keeps a key per unit.
    ids = [
        signer.sign(
            Claims("f", "a", 1, "default", signer.unit_hash(f"u{n % 200}"), now, f"n-{n:08d}")
        )
        for n in range(count)
    ]
    return [
        json.dumps({"response_id": r, "kind": KINDS[n % 4]}).encode() for n, r in enumerate(ids)
    ]


async def _call(server: HotPath, path: str, body: bytes) -> None:
    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2),
        "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await server(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"{path} answered {status}")


async def _drained(server: HotPath) -> None:
    """Wait until the pipeline has spooled (or dropped) every event emitted so far."""
    stats = server.app.state.runtime.events.stats
    for _ in range(2000):
        if stats.spooled + stats.dropped >= stats.emitted:
            return
        await asyncio.sleep(0.005)
    raise RuntimeError(f"the pipeline did not drain: {stats}")


async def _run(
    label: str, single_calls: int, batch_calls: int, profile: str | None, ids: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = _server(Path(tmp))
        # Each load judges its own ids, in turn: with more ids than calls, every call a new id.
        bodies = _bodies(2 * ids + 1)
        singles, items = bodies[:ids], [json.loads(b) for b in bodies[ids : 2 * ids]]
        batches = [
            json.dumps({"items": items[start : start + 100]}).encode()
            for start in range(0, max(len(items) - 99, 1), 100)
        ]
        async with server.app.router.lifespan_context(server.app):
            for _ in range(300):  # warm-up
                await _call(server, "/v1/feedback", bodies[-1])
            loads = (
                ("one-item", "/v1/feedback", singles, 1, single_calls),
                ("batch", "/v1/feedback/batch", batches, 100, batch_calls),
            )
            for name, path, load, per, calls in loads:
                if profile is not None and name != profile:
                    continue
                best = float("inf")
                profiler = cProfile.Profile(time.thread_time) if profile else None
                turn = 0
                for _ in range(3):
                    started = time.process_time()
                    if profiler is not None:
                        profiler.enable()
                    for _ in range(calls):
                        await _call(server, path, load[turn % len(load)])
                        turn += 1
                    await _drained(server)  # the pipeline's work is part of the cost
                    if profiler is not None:
                        profiler.disable()
                    best = min(best, time.process_time() - started)
                print(f"{label:8s} {name:9s} {best / (calls * per) * 1e6:7.1f} us CPU per item")
                if profiler is not None:
                    stats = pstats.Stats(profiler)
                    stats.sort_stats("tottime").print_stats(25)
                    stats.sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="gateway")
    parser.add_argument("--calls", type=int, default=4000, help="one-item calls per round")
    parser.add_argument("--batches", type=int, default=60, help="batch calls per round")
    parser.add_argument(
        "--profile", choices=("one-item", "batch"), help="cProfile (thread CPU) of this load only"
    )
    parser.add_argument(
        "--ids",
        type=int,
        default=200,
        help="distinct response ids per load, judged in turn (200: as bench_shape; over 3x "
        "the calls or 300x the batches: every judgement of a new id)",
    )
    args = parser.parse_args()
    asyncio.run(_run(args.label, args.calls, args.batches, args.profile, args.ids))


if __name__ == "__main__":
    main()
