"""Liveness, readiness and the Prometheus page."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.deps import RuntimeDep

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(rt: RuntimeDep, response: Response) -> dict[str, object]:
    """Ready when config is loaded, not draining, and each pool has an endpoint answering."""
    pools = list(rt.upstreams.pools.values())
    answers = await asyncio.gather(*(rt.upstreams.probe(pool) for pool in pools))
    status = {pool.name: ("up" if ok else "down") for pool, ok in zip(pools, answers, strict=True)}
    flag = rt.settings.server.drain_flag
    draining = not rt.ready or (flag is not None and flag.exists())
    ready = not draining and all(answers)
    if not ready:
        response.status_code = 503
    return {"status": "ready" if ready else "unready", "draining": draining, "pools": status}


@router.get("/metrics", tags=["ops"], include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    """Prometheus text exposition of this process's (or all workers') metrics."""
    return Response(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
