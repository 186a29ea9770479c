"""FaultyUpstream: a scripted OpenAI-shaped server for exact faults the simulator does not make.

The behaviour is chosen by the served model name the gateway sends: `ok`, `garbage`
(invalid JSON), `hang` (never answers), `die-midstream` (two chunks, then the connection
drops), `stall-midstream` (two chunks, then silence), `http-500`, `flat-error` (vLLM's old
flat error object), `sse-garbage` (a 200 event-stream whose events are not SSE data),
`id-in-text` (a stream whose text is the upstream's own id). It runs on its own thread and
event loop, so sync tests can use it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.support.ports import free_port


def _chunk(model: str, text: str) -> bytes:
    doc = {
        "id": "chatcmpl-faulty",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"


class FaultyUpstream:
    """A loopback server that misbehaves on purpose; counts what it saw."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.cancelled = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="faulty-upstream", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """Base URL for a pool's endpoints."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyUpstream:
        """Serve on a background thread."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("faulty upstream did not start")
        return self

    def close(self) -> None:
        """Stop serving and join the thread."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        mode = body["model"]
        try:
            return await self._answer(request, mode, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _until_client_leaves(self, request: web.Request) -> None:
        # aiohttp no longer cancels handlers on disconnect; watch the transport instead.
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        self.cancelled += 1

    async def _answer(
        self, request: web.Request, mode: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        if mode == "garbage":
            return web.Response(body=b"<html>not json", content_type="text/html")
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "hold":  # no answer until the caller hangs up, which is counted
            await self._until_client_leaves(request)
            return web.Response(status=204)
        if mode == "http-500":
            return web.Response(status=500, body=b"Internal Server Error")
        if mode == "flat-error":
            flat = {"object": "error", "message": "too long", "type": "BadRequestError",
                    "param": None, "code": 400}  # fmt: skip
            return web.json_response(flat, status=400)
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            if mode == "sse-garbage":
                await response.write(b"<html>this is not\n\nan event stream</html>\n\n")
                return response
            words = ("chatcmpl-faulty", " two ") if mode == "id-in-text" else ("one ", "two ")
            for word in words:
                await response.write(_chunk(mode, word))
            if mode == "die-midstream":
                assert request.transport is not None
                request.transport.close()
                return response
            if mode == "stall-midstream":
                await self._until_client_leaves(request)
                return response
            await response.write(_chunk(mode, "three"))
            await response.write(b"data: [DONE]\n\n")
            return response
        answer = {
            "id": "chatcmpl-faulty",
            "object": "chat.completion",
            "created": 1,
            "model": mode,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "fine"},
                 "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip
        return web.json_response(answer)


@pytest.fixture(scope="module")
def faulty_upstream() -> Iterator[FaultyUpstream]:
    """A FaultyUpstream shared by a test module (compare counters before and after)."""
    server = FaultyUpstream().start()
    yield server
    server.close()
