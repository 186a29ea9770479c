"""What the request limits of issue 14 cost per request, side by side, in one process.

1. The HTTP protocol: uvicorn's httptools protocol with corked writes alone (what the
   gateway ran before) against GuardedHttpToolsProtocol (corked writes plus the header size
   limit, the header and body timeouts and the per-address cap), each fed the same
   keep-alive requests through a stand-in transport and answered by a trivial ASGI app.
   Alternating blocks; the median CPU time per request of each, and the ratio.
2. The proxy's request steps: headers read with the client ids checked, n and best_of
   read, and the upstream payload encoded with the nesting bound next to a plain encode.

A microbenchmark because the whole-gateway figure (bench_gateway.py) moves by more than
this from run to run on a shared machine.

    .venv/bin/python loadtests/bench_request_limits.py [--requests 4000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
from typing import Any, cast

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.asgi import RequestHeaders
from gateway.http_server import CorkedTransport, GuardedHttpToolsProtocol
from gateway.protocol import choices_asked, encode_forward, parse_inbound

BODY = orjson.dumps(
    {
        "model": "support-bot",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant." * 4},
            {"role": "user", "content": "Where is my order 1234? It was due on Monday." * 2},
        ],
        "max_tokens": 128,
        "temperature": 0.7,
        "user": "user-42",
    }
)
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
    b"Authorization: Bearer lgk-0123456789abcdef0123456789abcdef\r\n"
    b"Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.40.0\r\n"
    b"X-Request-Id: req-0123456789abcdef\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
)
REQUEST = HEAD + BODY


class CorkedOnly(HttpToolsProtocol):
    """The protocol before issue 14: corked writes, no limits."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        corked = CorkedTransport(cast(asyncio.Transport, transport), loop)
        super().connection_made(cast(asyncio.Transport, corked))


class NullTransport(asyncio.Transport):
    """Stands in for a socket: takes writes, counts answers."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.answers += bytes(data).count(b"HTTP/1.1 200")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the body, answers 200."""
    if scope["type"] != "http":
        return
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


async def protocol_block(cls: type[HttpToolsProtocol], requests: int) -> float:
    """CPU seconds per request for `requests` keep-alive requests on one connection."""
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol = cls(config=config, server_state=ServerState(), app_state={})
    transport = NullTransport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        for _ in range(3):  # the app's task, then the corked flush
            await asyncio.sleep(0)
    spent = time.process_time() - started
    assert transport.answers == requests, (transport.answers, requests)
    protocol.connection_lost(None)
    return spent / requests


def main() -> None:
    """Run both parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    async def protocols() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"before": [], "after": []}
        await protocol_block(CorkedOnly, 200)  # warm up both
        await protocol_block(GuardedHttpToolsProtocol, 200)
        for _ in range(args.rounds):
            out["before"].append(await protocol_block(CorkedOnly, args.requests))
            out["after"].append(await protocol_block(GuardedHttpToolsProtocol, args.requests))
        return out

    result = asyncio.run(protocols())
    before, after = statistics.median(result["before"]), statistics.median(result["after"])
    print("HTTP protocol, CPU per request (median of rounds):")
    print(f"  corked only (before)          {before * 1e6:8.2f} us")
    print(f"  guarded (after)               {after * 1e6:8.2f} us")
    added = (after - before) * 1e6
    print(f"  after / before                {after / before:8.3f}x  ({added:+.2f} us)")

    raw_headers = [tuple(line.split(b": ", 1)) for line in HEAD.split(b"\r\n")[1:] if b": " in line]
    headers = [(name.lower(), value) for name, value in raw_headers]
    body = orjson.loads(BODY)
    n = 20000
    per = {
        "RequestHeaders (ids checked)": timeit.timeit(lambda: RequestHeaders(headers), number=n),
        "parse_inbound": timeit.timeit(lambda: parse_inbound(BODY, "chat"), number=n),
        "orjson.dumps (before)": timeit.timeit(lambda: orjson.dumps(body), number=n),
        "encode_forward (depth bound)": timeit.timeit(lambda: encode_forward(body), number=n),
        "choices_asked (n, best_of)": timeit.timeit(lambda: choices_asked(body, 128), number=n),
    }
    print("Proxy request steps, per request:")
    for name, total in per.items():
        print(f"  {name:30s}{total / n * 1e6:8.2f} us")


if __name__ == "__main__":
    main()
