from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import jwt
import pytest

from app.auth import issue_access_token
from app.main import create_app
from app.settings import InsecureConfiguration, Settings
from app.users.models import Role
from tests.conftest import ApiUser, MakeUser

ME = "/api/v1/practice/sessions"
# The status read finds its caller itself (app/deps.py's caller_of), not through the
# dependency every other route uses: each refusal is checked on both.
STATUS = f"/api/v1/tasks/analysis/{uuid.uuid4()}/status"
SUBMIT = "/api/v1/tasks/analysis/submit"  # its caller, too, is found by caller_of


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _expect_401(
    client: httpx.AsyncClient, headers: dict[str, str], *, status_too: bool = True
) -> dict[str, object]:
    response = await client.post(ME, json={}, headers=headers)
    answers = [response]
    if status_too:
        answers.append(await client.get(STATUS, headers=headers))
        # An invalid body as well: the caller is refused before the body is read (401, not 422).
        answers.append(await client.post(SUBMIT, json={}, headers=headers))
    for answer in answers:
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "unauthorized"
    body: dict[str, object] = response.json()
    return body


async def test_a_scheme_other_than_bearer_is_refused(
    client: httpx.AsyncClient, alice: ApiUser
) -> None:
    token = alice.headers["Authorization"].removeprefix("Bearer ")
    await _expect_401(client, {"Authorization": f"Basic {token}"})  # a valid token, wrong scheme
    await _expect_401(client, {"Authorization": "Bearer"})


async def test_missing_token(client: httpx.AsyncClient) -> None:
    await _expect_401(client, {})


async def test_malformed_token(client: httpx.AsyncClient) -> None:
    await _expect_401(client, {"Authorization": "Bearer not.a.jwt"})


async def test_expired_token(client: httpx.AsyncClient, settings: Settings, alice: ApiUser) -> None:
    token = issue_access_token(settings, alice.user_id, Role.USER, ttl_seconds=-10)
    body = await _expect_401(client, {"Authorization": f"Bearer {token}"})
    assert "expired" in body["error"]["message"].lower()  # type: ignore[index]


async def test_alg_none_token(client: httpx.AsyncClient, alice: ApiUser) -> None:
    claims = {"sub": str(alice.user_id), "role": "admin", "exp": int(time.time()) + 600}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    await _expect_401(client, {"Authorization": f"Bearer {token}"})


async def test_wrongly_signed_token(client: httpx.AsyncClient, alice: ApiUser) -> None:
    claims = {"sub": str(alice.user_id), "exp": int(time.time()) + 600}
    token = jwt.encode(claims, "another-secret-that-is-long-enough-to-be-valid!", "HS256")
    await _expect_401(client, {"Authorization": f"Bearer {token}"})


async def test_token_without_exp(
    client: httpx.AsyncClient, settings: Settings, alice: ApiUser
) -> None:
    token = jwt.encode({"sub": str(alice.user_id)}, settings.jwt_secret or "", "HS256")
    await _expect_401(client, {"Authorization": f"Bearer {token}"})


async def test_audience_and_issuer_checked_when_configured(
    settings: Settings, alice: ApiUser
) -> None:
    strict = settings.model_copy(update={"jwt_audience": "vocalborn", "jwt_issuer": "platform"})
    app = create_app(strict)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        await _expect_401(client, alice.headers)  # no aud/iss claims
        good = issue_access_token(strict, alice.user_id, Role.USER)
        response = await client.post(ME, json={}, headers={"Authorization": f"Bearer {good}"})
        assert response.status_code == 201


async def test_unknown_user_cannot_create_sessions(
    client: httpx.AsyncClient, settings: Settings, alice: ApiUser
) -> None:
    token = issue_access_token(settings, uuid.uuid4(), Role.USER)
    # Creating needs the user's row; a read finds no task of theirs (404), as for anyone.
    await _expect_401(client, {"Authorization": f"Bearer {token}"}, status_too=False)


async def test_user_on_admin_route_is_forbidden(client: httpx.AsyncClient, alice: ApiUser) -> None:
    response = await client.get("/api/v1/admin/users", headers=alice.headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


async def test_admin_lists_users(
    client: httpx.AsyncClient, make_user: MakeUser, alice: ApiUser
) -> None:
    admin = await make_user("root@example.test", Role.ADMIN)
    response = await client.get("/api/v1/admin/users", headers=admin.headers)
    assert response.status_code == 200
    assert {u["email"] for u in response.json()} == {"alice@example.test", "root@example.test"}


@pytest.mark.parametrize("secret", [None, "secret", "short-but-not-listed"])
def test_production_refuses_missing_or_weak_secret(secret: str | None) -> None:
    settings = Settings(_env_file=None, environment="production", jwt_secret=secret)  # type: ignore[call-arg]
    with pytest.raises(InsecureConfiguration):
        create_app(settings)


STRONG = "x" * 20 + "y" * 20
# Deliberately weak values, the kind production must refuse (placeholders, not secrets).
PLACEHOLDER = "changeme"  # pragma: allowlist secret
SHORT = "short"  # pragma: allowlist secret
PUBLIC_KEY = "-----BEGIN PUBLIC KEY-----\nnot read before a token comes\n-----END PUBLIC KEY-----"


@pytest.mark.parametrize(
    "keys",
    [
        {"jwt_secret": STRONG, "stream_token_secret": PLACEHOLDER},
        # RS256 verifies access tokens with the public key, but the stream tokens are HS256
        # with JWT_SECRET when STREAM_TOKEN_SECRET is unset: a weak one must be refused too.
        {"jwt_algorithm": "RS256", "jwt_public_key": PUBLIC_KEY, "jwt_secret": PLACEHOLDER},
        {"jwt_algorithm": "RS256", "jwt_public_key": PUBLIC_KEY, "stream_token_secret": SHORT},
    ],
    ids=["weak stream secret", "RS256, weak JWT_SECRET signs stream tokens", "RS256, weak stream"],
)
def test_production_refuses_a_weak_stream_token_key(keys: dict[str, str]) -> None:
    settings = Settings(_env_file=None, environment="production", **keys)  # type: ignore[call-arg]
    with pytest.raises(InsecureConfiguration, match="stream tokens"):
        create_app(settings)


def test_production_accepts_rs256_with_a_strong_stream_key() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="production",
        jwt_algorithm="RS256",
        jwt_public_key=PUBLIC_KEY,
        stream_token_secret=STRONG,
    )
    assert create_app(settings).title


def test_production_accepts_a_strong_secret() -> None:
    settings = Settings(_env_file=None, environment="production", jwt_secret="x" * 20 + "y" * 20)  # type: ignore[call-arg]
    assert create_app(settings).title
