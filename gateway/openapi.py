"""OpenAPI entries for the raw ASGI routes (proxy, feedback), so clients and fuzzers see them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.routes.feedback import openapi_routes as feedback_openapi_routes

_ERROR = {
    "description": "OpenAI error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                        "required": ["message", "type"],
                    }
                },
                "required": ["error"],
            }
        }
    },
}


def _operation(summary: str, schema_name: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": ["openai"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
                },
            },
            "responses": {
                "200": {
                    "description": "The upstream's answer (JSON, or SSE when stream is true)",
                    "content": {"application/json": {}, "text/event-stream": {}},
                },
                "400": _ERROR,
                "404": _ERROR,
                "413": _ERROR,
                "502": _ERROR,
                "503": _ERROR,
                "504": _ERROR,
            },
        }
    }


def document_raw_routes(app: FastAPI) -> None:
    """Add the raw routes to the generated OpenAPI document.

    /v1/chat/completions and /v1/completions by hand (their answers are the upstream's);
    /v1/feedback and /v1/feedback/batch from FastAPI routes declared for that alone, so they
    read as they did when FastAPI served them.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        routes = [*app.routes, *feedback_openapi_routes()]
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ChatCompletionRequest, CompletionRequest):
            components[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        paths = schema.setdefault("paths", {})
        paths["/v1/chat/completions"] = _operation(
            "Create a chat completion", "ChatCompletionRequest"
        )
        paths["/v1/completions"] = _operation("Create a completion", "CompletionRequest")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
