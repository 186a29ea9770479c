"""The feedback routes' own CPU, in process: ASGI calls straight into the server app.

No sockets, no HTTP parsing, no Kafka: a gateway app (HotPath) with events to a spool, called
with ready-made ASGI scopes, so what is left is the route (auth, body, validation, id check,
the event handed to the pipeline, the answer) and the pipeline's own work on the loop. CPU is
process time (every thread) per item over N calls, the best of 3. For an A/B, run it twice:
once as it is and once with the other code first on PYTHONPATH, and -P so that the
checkout itself does not come first (as bench_shape's --feedback-variant does). Indicative.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.bench_feedback_route --label new
    PYTHONPATH=OLD_DIR:$PWD .venv/bin/python -P -m loadtests.bench_feedback_route --label old
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    ids = [
        signer.sign(Claims("f", "a", 1, "default", "u" * 32, now, f"n-{n:08d}"))
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


async def _run(label: str, single_calls: int, batch_calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = _server(Path(tmp))
        singles = _bodies(200)
        batch = json.dumps({"items": [json.loads(s) for s in singles[:100]]}).encode()
        async with server.app.router.lifespan_context(server.app):
            for _ in range(300):  # warm-up
                await _call(server, "/v1/feedback", singles[0])
            loads = (
                ("one-item", "/v1/feedback", singles, 1, single_calls),
                ("batch", "/v1/feedback/batch", [batch], 100, batch_calls),
            )
            for name, path, bodies, per, calls in loads:
                best = float("inf")
                for _ in range(3):
                    started = time.process_time()
                    for n in range(calls):
                        await _call(server, path, bodies[n % len(bodies)])
                    await asyncio.sleep(0.05)  # let the pipeline take what was emitted
                    best = min(best, time.process_time() - started)
                print(f"{label:8s} {name:9s} {best / (calls * per) * 1e6:7.1f} us CPU per item")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="gateway")
    parser.add_argument("--calls", type=int, default=4000, help="one-item calls per round")
    parser.add_argument("--batches", type=int, default=60, help="batch calls per round")
    args = parser.parse_args()
    asyncio.run(_run(args.label, args.calls, args.batches))


if __name__ == "__main__":
    main()
