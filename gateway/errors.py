"""GatewayError family: every failure the gateway reports, in OpenAI's error shape."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException


class GatewayError(Exception):
    """Base: status, OpenAI error type and code travel with the exception."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(
        self, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        """OpenAI error JSON for this error."""
        return error_body(self.message, self.type, self.param, self.code)


class InternalError(GatewayError):
    status, type, code = 500, "server_error", "internal_error"


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", None


class InvalidJSON(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_json"


class Unauthorized(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(GatewayError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class UnknownModel(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class Conflict(GatewayError):
    status, type, code = 409, "invalid_request_error", "conflict"


class BodyTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnprocessableEntity(GatewayError):
    status, type, code = 422, "invalid_request_error", "invalid_value"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class BadGateway(GatewayError):
    status, type, code = 502, "upstream_error", "bad_gateway"


class UpstreamUnavailable(GatewayError):
    status, type, code = 503, "upstream_error", "upstream_unavailable"


class EventsBacklogged(GatewayError):
    """The event pipeline is too far behind to take a judgement without risking it: retry."""

    status, type, code = 503, "server_error", "events_backlogged"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "upstream_error", "upstream_timeout"


class DuplicateAuthorization(GatewayError):
    status, type, code = 400, "invalid_request_error", "duplicate_authorization"


class RequestTimeout(GatewayError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


def shown(name: str, limit: int = 64) -> str:
    """A client-chosen name as error messages quote it: cut to `limit` characters."""
    return name if len(name) <= limit else f"{name[:limit]}... ({len(name)} characters)"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    """Serialise OpenAI's `{"error": {...}}` object."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the FastAPI routes raise as OpenAI error JSON."""

    async def on_gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return _json(exc.status, exc.body(), exc.headers)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid"))
        return _json(422, error_body(message, "invalid_request_error", param, "invalid_value"))

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _json(exc.status_code, error_body(str(exc.detail), type_), None)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
