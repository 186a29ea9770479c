"""GET /v1/models: the model names apps may ask for."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import RuntimeDep

router = APIRouter()


@router.get("/v1/models", tags=["openai"])
async def list_models(rt: RuntimeDep) -> dict[str, Any]:
    """Models in OpenAI's list shape."""
    created = int(rt.settings_loaded_at)
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "loopgate"}
            for name in rt.resolver.models()
        ],
    }
