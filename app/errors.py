"""One error shape for every response: {"error": {"code": "...", "message": "..."}}."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import database_unreachable
from app.storage import StorageUnavailable

log = logging.getLogger(__name__)

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ErrorDetail(BaseModel):
    """`code` (machine-readable, e.g. "not_found") and `message` (for people); some errors
    add fields of their own (a validation error's `fields`, a conflict's `status`...)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorOut(BaseModel):
    """The one error shape, as the OpenAPI document describes it."""

    error: ErrorDetail


RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: each status code answered in the one error shape
    (a 429 with its Retry-After header). Declaring 422 replaces FastAPI's own validation
    error schema, which is not the shape we answer with."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status_code in status_codes:
        response: dict[str, Any] = {
            "model": ErrorOut,
            "description": HTTPStatus(status_code).phrase,
        }
        if status_code == 429:
            response["headers"] = RETRY_AFTER_HEADER
        responses[status_code] = response
    return responses


class AppError(Exception):
    """An error a client can act on; raised by services, rendered by the handler below."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class TooManyRequests(AppError):
    """429 in the one error shape, with Retry-After in whole seconds (at least 1), also in the
    body as `retry_after`: what every limit answers (submits per user, open streams)."""

    def __init__(self, code: str, message: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            429,
            code,
            message,
            details={"retry_after": seconds},
            headers={"Retry-After": str(seconds)},
        )


class NotFound(AppError):
    def __init__(self, what: str) -> None:
        super().__init__(404, "not_found", f"{what} not found")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error.update(details)
    return {"error": error}


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code, headers=headers)


def app_error_response(exc: AppError) -> JSONResponse:
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return app_error_response(exc)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [
        {"loc": [str(part) for part in err.get("loc", ())], "message": err.get("msg", "")}
        for err in exc.errors()
    ]
    return error_response(422, "validation_error", "Request validation failed", {"fields": fields})


async def _storage_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The recording store failed (S3 unreachable, a disk error): 503, the client may retry;
    the cause goes to the log only (it names the endpoint and the key)."""
    log.warning("storage unavailable: %s", exc)
    return error_response(
        503, "storage_unavailable", "Recording storage is unavailable, try again later"
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "Internal server error")


# How long a client is told to wait before trying again while PostgreSQL does not answer.
DATABASE_RETRY_AFTER_SECONDS = 5
# What a database that cannot be reached raises (asyncpg's own errors, SQLAlchemy's wrapping,
# a refused or missing socket); each is answered 503 only if `database_unreachable` says so.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """503 `database_unavailable` (with Retry-After) while PostgreSQL cannot be reached: a
    client can try again; anything else is unexpected (500)."""
    if not database_unreachable(exc):
        return await _unexpected(request, exc)
    log.warning("%s %s: the database does not answer (%r)", request.method, request.url.path, exc)
    return error_response(
        503,
        "database_unavailable",
        "The database does not answer; try again shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, _database_error)
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StorageUnavailable, _storage_unavailable)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
