"""An in-process gateway (create_app behind HotPath) over real simulators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import FastAPI
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter

from gateway.app import HotPath, create_app
from gateway.recorder import RequestObserver
from gateway.settings import Settings

ADMIN_TOKEN = "t" * 32
KEY = "k" * 40


def flag_settings(urls: dict[str, str], folder: Path, **sections: Any) -> Settings:
    """Pools `a` and `b`, flag `bot` splitting them 50/50 (control a), events to a spool."""
    flags = folder / "flags.yaml"
    flags.write_text(
        yaml.safe_dump(
            {
                "flags": [
                    {
                        "key": "bot",
                        "control": "a",
                        "variants": [
                            {
                                "name": name,
                                "pool": name,
                                "served_model": f"policy-{name}",
                                "weight": 50,
                            }
                            for name in urls
                        ],
                    }
                ]
            }
        )
    )
    config: dict[str, Any] = {
        "instance": "obs-test",
        "pools": {
            name: {"endpoints": [url], "served_model": f"policy-{name}"}
            for name, url in urls.items()
        },
        "flags": {"source": "file", "path": str(flags), "admin_token": ADMIN_TOKEN},
        "events": {"spool": {"dir": str(folder / "spool")}},
        "ids": {"keys": [KEY]},
        **sections,
    }
    return Settings(**config)


@asynccontextmanager
async def running(
    settings: Settings,
    exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    observers: Sequence[RequestObserver] = (),
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client talking to it through HotPath."""
    app = create_app(
        settings, span_exporter=exporter, metric_reader=metric_reader, observers=observers
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=HotPath(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield app, client
