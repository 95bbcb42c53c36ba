"""Verified tokens are remembered until their expiry, never past it nor across keys."""

from __future__ import annotations

import secrets
import time
import uuid

import jwt
import pytest

from app.auth import Unauthorized, decode_access_token, issue_access_token
from app.settings import Settings
from app.users.models import Role


def _settings() -> Settings:
    return Settings(_env_file=None, jwt_secret=secrets.token_urlsafe(48))


def test_a_remembered_token_is_refused_once_it_has_expired() -> None:
    settings = _settings()
    user_id = uuid.uuid4()
    token = issue_access_token(settings, user_id, Role.ADMIN, ttl_seconds=1)
    first = decode_access_token(token, settings)
    assert decode_access_token(token, settings) == first
    assert first.user_id == user_id and first.is_admin
    time.sleep(max(_exp(token) - time.time(), 0) + 0.05)
    with pytest.raises(Unauthorized, match="Token has expired"):
        decode_access_token(token, settings)


def test_a_remembered_token_is_checked_again_under_another_key_or_audience() -> None:
    settings = _settings()
    token = issue_access_token(settings, uuid.uuid4(), Role.USER)
    decode_access_token(token, settings)
    with pytest.raises(Unauthorized, match="Invalid token"):
        decode_access_token(token, _settings())
    with pytest.raises(Unauthorized, match="Invalid token"):
        decode_access_token(token, settings.model_copy(update={"jwt_audience": "other"}))


def test_an_invalid_token_is_never_remembered() -> None:
    settings = _settings()
    token = issue_access_token(settings, uuid.uuid4(), Role.USER)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for _ in range(2):
        with pytest.raises(Unauthorized, match="Invalid token"):
            decode_access_token(tampered, settings)
    assert decode_access_token(token, settings).role is Role.USER


def _exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])
