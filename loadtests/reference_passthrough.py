"""The reference the gateway is measured against: a bare FastAPI route forwarding with aiohttp.

Run as `python loadtests/reference_passthrough.py PORT UPSTREAM_URL`. It does what the
field's thinnest proxies do and nothing more: read the body, POST it upstream over a pooled
aiohttp session, and relay the answer (streamed chunks as they come). For feedback it has
the bare routes the gateway's are measured beside: parse the same body with the same
pydantic model (each batch item on its own, as the gateway does) and answer 200.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from gateway.routes.feedback import FeedbackBatchIn, FeedbackIn


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

    @app.post("/v1/feedback")
    async def feedback(item: FeedbackIn) -> dict[str, object]:
        return {"object": "feedback", "response_id": item.response_id, "kind": item.kind}

    @app.post("/v1/feedback/batch")
    async def feedback_batch(batch: FeedbackBatchIn) -> dict[str, object]:
        data: list[dict[str, object]] = []
        for index, raw in enumerate(batch.items):
            try:
                item = FeedbackIn.model_validate(raw)
            except ValidationError:
                data.append({"index": index, "status": 422})
            else:
                data.append({"index": index, "status": 200, "kind": item.kind})
        return {"object": "list", "data": data, "recorded": len(data)}

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
