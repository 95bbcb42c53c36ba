"""FastAPI dependencies: settings, a database session per request, the caller.

All `async def`, though none awaits: FastAPI runs a plain `def` dependency in a worker thread,
a thread hop per dependency and request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
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


async def submitting_user(request: Request) -> Principal:
    """The caller of a submit (`caller_of`: a dependency without sub-dependencies, on the
    hottest write), counted against SUBMIT_RATE_LIMIT (429 with Retry-After past it); only
    after authentication, so anonymous requests never spend a user's quota. It runs before
    the body is validated, as every route's caller does."""
    state = state_of(request)
    user = caller_of(request, state.settings)
    await state.submit_limit.check(user.user_id)
    return user


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
UserDep = Annotated[Principal, Depends(current_user)]
AdminDep = Annotated[Principal, Depends(require_admin)]
SubmittingUserDep = Annotated[Principal, Depends(submitting_user)]
