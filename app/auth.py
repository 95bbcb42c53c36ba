"""JWT bearer authentication (PyJWT): algorithm pinned, exp and sub required."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from app.errors import AppError
from app.settings import Settings
from app.users.models import Role


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class Unauthorized(AppError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def decode_access_token(token: str, settings: Settings) -> Principal:
    """The caller of a bearer token: its signature, `exp` and `sub` (and `aud`, `iss` when
    configured) checked by PyJWT; raises Unauthorized. A token verified once is remembered
    (an LRU of TOKEN_CACHE_SIZE tokens) until its `exp`: a client's next requests skip the
    signature check, and an expired token is refused as PyJWT would refuse it."""
    key = settings.jwt_verification_key
    if key is None:
        raise Unauthorized("Token verification is not configured")
    principal, expires_at = _verified(
        token, key, settings.jwt_algorithm, settings.jwt_audience, settings.jwt_issuer
    )
    if expires_at <= time.time():
        raise Unauthorized("Token has expired")
    return principal


TOKEN_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=TOKEN_CACHE_SIZE)
def _verified(
    token: str, key: str, algorithm: str, audience: str | None, issuer: str | None
) -> tuple[Principal, float]:
    """(the caller, its token's `exp` in Unix seconds); raises Unauthorized (never cached)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            options={
                "require": ["exp", "sub"],
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
            },
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("Token has expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("Invalid token") from exc
    return _principal(claims), float(claims["exp"])


def _principal(claims: dict[str, Any]) -> Principal:
    if claims.get("typ", "access") != "access":
        raise Unauthorized("Not an access token")
    try:
        user_id = uuid.UUID(str(claims["sub"]))
        role = Role(claims.get("role", Role.USER))
    except ValueError as exc:
        raise Unauthorized("Invalid token claims") from exc
    return Principal(user_id=user_id, role=role)


def issue_access_token(
    settings: Settings, user_id: uuid.UUID, role: Role, ttl_seconds: int = 3600
) -> str:
    """For the CLI, demos and tests; the real platform issues its own tokens."""
    key = settings.jwt_signing_key
    if key is None:
        raise RuntimeError("No JWT signing key configured (JWT_SECRET or JWT_PRIVATE_KEY)")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "role": role.value,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)
