"""Short-lived stream tokens for browsers (EventSource and WebSocket cannot send headers).

`POST …/stream-token` returns a 60 s token scoped to one task or one session, accepted as
`?stream_token=`. Long-lived access tokens are refused in URLs.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import jwt
from starlette.requests import HTTPConnection

from app.auth import Principal, Unauthorized, decode_access_token
from app.errors import AppError, TooManyRequests
from app.settings import Settings
from app.users.models import Role

STREAM_ALGORITHM = "HS256"
STREAM_TYPE = "stream"
URL_ACCESS_TOKEN_PARAMS = ("access_token", "token", "jwt", "authorization")


def _key(settings: Settings) -> str:
    key = settings.stream_token_key
    if not key:
        raise AppError(503, "stream_tokens_unavailable", "Stream tokens are not configured")
    return key


def issue_stream_token(settings: Settings, user: Principal, scope: str) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user.user_id),
        "role": user.role.value,
        "typ": STREAM_TYPE,
        "scope": scope,
        "iat": now,
        "exp": now + settings.stream_token_ttl_seconds,
    }
    return jwt.encode(claims, _key(settings), algorithm=STREAM_ALGORITHM)


def decode_stream_token(token: str, settings: Settings, scope: str) -> Principal:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            _key(settings),
            algorithms=[STREAM_ALGORITHM],
            options={"require": ["exp", "sub", "typ", "scope"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("Stream token has expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("Invalid stream token") from exc
    if claims["typ"] != STREAM_TYPE:
        raise Unauthorized("Access tokens are not accepted in URLs")
    if claims["scope"] != scope:
        raise Unauthorized("The stream token is for another stream")
    try:
        return Principal(uuid.UUID(str(claims["sub"])), Role(claims.get("role", Role.USER)))
    except ValueError as exc:
        raise Unauthorized("Invalid stream token") from exc


def stream_principal(connection: HTTPConnection, settings: Settings, scope: str) -> Principal:
    """The caller of a stream: `?stream_token=` for browsers, else the bearer header."""
    params = connection.query_params
    if any(name in params for name in URL_ACCESS_TOKEN_PARAMS):
        raise Unauthorized("Access tokens are not accepted in URLs; use a stream token")
    token = params.get("stream_token")
    if token is not None:
        return decode_stream_token(token, settings, scope)
    scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        raise Unauthorized("Missing bearer token or stream token")
    return decode_access_token(credentials, settings)


class StreamLimiter:
    """Open streams per user in this process; more than the limit answers 429 with a
    Retry-After of one heartbeat (`retry_after` seconds): a stream whose client has gone
    gives its place back when its next heartbeat fails to be sent, at the latest."""

    def __init__(self, limit: int, retry_after: float = 15.0) -> None:
        self._limit = limit
        self._retry_after = retry_after
        self._open: Counter[uuid.UUID] = Counter()

    def take(self, user: Principal) -> None:
        """One of the user's places, checked and taken in one step (nothing is awaited in
        between, so concurrent openings cannot all pass the same check), before the response
        starts: a 429 cannot be sent once the stream is open."""
        if self._open[user.user_id] >= self._limit:
            raise TooManyRequests(
                "too_many_streams",
                f"At most {self._limit} open streams per user",
                self._retry_after,
            )
        self._open[user.user_id] += 1

    def give_back(self, user: Principal) -> None:
        """Once per `take` (the caller makes sure of it)."""
        self._open[user.user_id] -= 1
        if self._open[user.user_id] <= 0:
            del self._open[user.user_id]

    def open_streams(self, user_id: uuid.UUID) -> int:
        """The places `user_id` holds now."""
        return self._open[user_id]
