"""Error type and JSON error envelope shared by every route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    503: "busy",
}


class AnalyzerError(Exception):
    """An error with an HTTP status, a machine-readable code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error intact when it crosses the process-pool boundary.
        return (AnalyzerError, (self.status, self.code, self.message, self.headers))

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def stream_body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    content = {"error": {"code": code, "message": message}}
    return JSONResponse(status_code=status, content=content, headers=headers)


async def _analyzer_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AnalyzerError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, str(exc.detail), headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid request")


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, including framework ones, use the {"error": {...}} envelope."""
    app.add_exception_handler(AnalyzerError, _analyzer_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
