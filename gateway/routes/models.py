"""GET /v1/models: the model names the calling key may ask for."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import CallerDep, RuntimeDep

router = APIRouter()


@router.get("/v1/models", tags=["openai"])
async def list_models(rt: RuntimeDep, app: CallerDep) -> dict[str, Any]:
    """Models in OpenAI's list shape: those the caller's key allows (401 without a key)."""
    created = int(rt.settings_loaded_at)
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "loopgate"}
            for name in rt.resolver.models()
            if app.may_use(name)
        ],
    }
