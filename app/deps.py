"""FastAPI dependencies: settings, a database session per request, the caller; and, for the
hottest routes, which read their request themselves (FastAPI's dependency solving was a
quarter of their CPU, bench/PROFILES.md), the same reads as plain functions with FastAPI's
answers: the caller, a JSON body, a text header.

All `async def`, though none awaits: FastAPI runs a plain `def` dependency in a worker thread,
a thread hop per dependency and request."""

from __future__ import annotations

import email.message
import json
from collections.abc import AsyncIterator
from functools import cache
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import Principal, Unauthorized, decode_access_token
from app.errors import AppError
from app.settings import Settings
from app.state import AppState
from app.storage import Storage

_bearer = HTTPBearer(auto_error=False)


def state_of(request: Request) -> AppState:
    """The application's state (app.main's lifespan sets it)."""
    state: AppState = request.app.state.vocalborn
    return state


async def get_state(request: Request) -> AppState:
    return state_of(request)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_storage(state: StateDep) -> Storage:
    return state.storage


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One session per request; services commit their own unit of work."""
    async with state.sessions() as session:
        yield session


async def current_user(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:  # HTTPBearer(auto_error=False): absent, or not a bearer scheme
        raise Unauthorized("Missing bearer token")
    return decode_access_token(credentials.credentials, state.settings)


def caller_of(request: Request, settings: Settings) -> Principal:
    """The caller of `request`, found as `current_user` finds it (an `Authorization: Bearer`
    header; raises Unauthorized), in one call: for the hottest read, which takes it without
    FastAPI's dependency tree (solving the caller and the state was a quarter of the status
    read's CPU, bench/PROFILES.md)."""
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing bearer token")
    return decode_access_token(token, settings)


async def require_admin(user: Annotated[Principal, Depends(current_user)]) -> Principal:
    if not user.is_admin:
        raise AppError(403, "forbidden", "Administrator role required")
    return user


async def submitting_user(request: Request, state: AppState) -> Principal:
    """The caller of a submit (`caller_of`; raises Unauthorized), counted against
    SUBMIT_RATE_LIMIT (raises TooManyRequests, 429 with Retry-After, past it); only after
    authentication, so anonymous requests never spend a user's quota. The submit calls it
    after reading its body as JSON and before validating the body's fields, where FastAPI
    solved it when it was a dependency."""
    user = caller_of(request, state.settings)
    await state.submit_limit.check(user.user_id)
    return user


ModelT = TypeVar("ModelT", bound=BaseModel)
# Validation errors in pydantic's shape, `loc` starting with where the value was ("body",
# "header"...), as RequestValidationError takes them.
ValidationErrors = list[dict[str, Any]]

BODY_UNREADABLE = "There was an error parsing the body"  # FastAPI's 400 detail


def declares_json(content_type: str | None) -> bool:
    """Whether a request's Content-Type makes FastAPI read its body as JSON: application/json
    or application/*+json, parameters allowed; no Content-Type is not JSON (FastAPI's
    strict_content_type, its default)."""
    if content_type == "application/json":  # what clients send; the rest parsed as FastAPI does
        return True
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _missing(loc: tuple[str, ...]) -> dict[str, Any]:
    """FastAPI's error for a required value that is absent (pydantic's `missing`)."""
    missing = ValidationError.from_exception_data(
        "Field required", [{"type": "missing", "loc": loc, "input": None}]
    )
    return dict(missing.errors(include_url=False)[0])


async def json_body(request: Request, model: type[ModelT]) -> ModelT | ValidationErrors:
    """The request's body read as FastAPI reads a required body parameter of type `model`: the
    model, or its validation errors (loc ("body", ...)) for the route to raise as
    RequestValidationError after its own checks (the caller), as FastAPI raised them after
    solving the dependencies. An empty body is missing; a body whose Content-Type is not
    JSON (`declares_json`) is validated as bytes (always invalid).

    Raises at once what FastAPI raised before any dependency: RequestValidationError
    (`json_invalid`, loc ("body", character offset)) for a body that is not JSON,
    HTTPException 400 for one that cannot be read or decoded (not UTF-8/16/32, nested too
    deep)."""
    try:
        content = await request.body()
    except Exception as exc:  # the client went away mid-body
        raise HTTPException(400, BODY_UNREADABLE) from exc
    if not content:
        return [_missing(("body",))]
    received: Any = content
    if declares_json(request.headers.get("content-type")):
        try:  # one pass from bytes to model: what almost every submit takes
            return model.model_validate_json(content)
        except ValidationError:
            pass  # FastAPI's reading below answers it (and bodies only the json module takes)
        try:
            received = json.loads(content)  # what FastAPI (Starlette's request.json) reads
        except json.JSONDecodeError as exc:
            error = {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
            raise RequestValidationError([error], body=exc.doc) from exc
        except Exception as exc:  # not UTF-8/16/32, RecursionError
            raise HTTPException(400, BODY_UNREADABLE) from exc
    try:
        return model.model_validate(received, from_attributes=True)
    except ValidationError as exc:
        return [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]


@cache
def _text(min_length: int, max_length: int) -> TypeAdapter[str]:
    return TypeAdapter(
        Annotated[str, StringConstraints(min_length=min_length, max_length=max_length)]
    )


def text_header(
    request: Request, name: str, *, min_length: int, max_length: int
) -> tuple[str | None, ValidationErrors]:
    """The optional header `name` (None if absent; the first if repeated) and, if its length
    in characters is outside min_length..max_length, pydantic's error (loc ("header", name)),
    as FastAPI validates a `Header(alias=name, min_length=..., max_length=...)` parameter."""
    value = request.headers.get(name)
    if value is None or min_length <= len(value) <= max_length:
        return value, []
    try:  # pydantic's own error and message
        return _text(min_length, max_length).validate_python(value), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        return None, [{**error, "loc": ("header", name, *error["loc"])} for error in errors]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
UserDep = Annotated[Principal, Depends(current_user)]
AdminDep = Annotated[Principal, Depends(require_admin)]
