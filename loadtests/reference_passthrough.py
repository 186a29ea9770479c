"""The reference the gateway is measured against: a bare FastAPI route forwarding with aiohttp.

Run as `python loadtests/reference_passthrough.py PORT UPSTREAM_URL`. It does what the
field's thinnest proxies do and nothing more: read the body, POST it upstream over a pooled
aiohttp session, and relay the answer (streamed chunks as they come).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse


def create_reference(upstream: str) -> FastAPI:
    """Pass-through app over one pooled aiohttp session."""
    session: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await session["s"].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.body()
        upstream_response = await session["s"].post(
            upstream + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        if upstream_response.headers.get("Content-Type", "").startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                async for chunk in upstream_response.content.iter_any():
                    yield chunk
                upstream_response.release()

            return StreamingResponse(relay(), media_type="text/event-stream")
        data = await upstream_response.read()
        upstream_response.release()
        return Response(data, status_code=upstream_response.status, media_type="application/json")

    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        create_reference(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
