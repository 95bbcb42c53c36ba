"""S4: the JWT matrix. Each forged or broken token is refused with 401 in the one error shape,
on an API that verifies HS256 and on one that verifies RS256, both with `aud` and `iss`
configured; a well-made token for the same user is accepted by the same API (the control:
each 401 comes from the defect, not from the setup)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.main import create_app
from app.settings import Settings
from tests.conftest import ApiUser
from tests.security.conftest import figure

pytestmark = pytest.mark.scenario("S4")

AUDIENCE = "vocalborn-api"
ISSUER = "https://auth.example.test"
PATH = "/api/v1/practice/sessions"


def _pem_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


PRIVATE_KEY, PUBLIC_KEY = _pem_pair()
OTHER_PRIVATE_KEY, _ = _pem_pair()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _hs256_by_hand(claims: dict[str, Any], key: bytes) -> str:
    """HS256 with any bytes as the key (PyJWT refuses a PEM key for HMAC, as it should)."""
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, claims)
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@dataclass(frozen=True)
class Api:
    algorithm: str
    settings: Settings
    signing_key: str  # what the real issuer signs with

    def sign(self, claims: dict[str, Any], key: str | None = None) -> str:
        return jwt.encode(claims, key or self.signing_key, algorithm=self.algorithm)


def _claims(user: ApiUser, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user.user_id),
        "role": "user",
        "iat": now,
        "exp": now + 600,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


Forge = Callable[[Api, ApiUser], str]

MATRIX: dict[str, Forge] = {
    "alg none": lambda api, u: _unsigned({"alg": "none", "typ": "JWT"}, _claims(u)) + ".",
    "alg None, signature kept": lambda api, u: (
        _unsigned({"alg": "None"}, _claims(u)) + "." + api.sign(_claims(u)).split(".")[2]
    ),
    "HS256 signed with the RS public key": lambda api, u: _hs256_by_hand(
        _claims(u), PUBLIC_KEY.encode()
    ),
    "wrong key": lambda api, u: api.sign(
        _claims(u),
        OTHER_PRIVATE_KEY if api.algorithm == "RS256" else secrets.token_urlsafe(48),
    ),
    "expired": lambda api, u: api.sign(_claims(u, exp=int(time.time()) - 30)),
    "future nbf": lambda api, u: api.sign(_claims(u, nbf=int(time.time()) + 600)),
    "wrong aud": lambda api, u: api.sign(_claims(u, aud="another-service")),
    "no aud": lambda api, u: api.sign(_claims(u, aud=None)),
    "wrong iss": lambda api, u: api.sign(_claims(u, iss="https://evil.example.test")),
    "no iss": lambda api, u: api.sign(_claims(u, iss=None)),
    "missing exp": lambda api, u: api.sign(_claims(u, exp=None)),
    "missing sub": lambda api, u: api.sign(_claims(u, sub=None)),
    "sub not a user id": lambda api, u: api.sign(_claims(u, sub="alice")),
    "stream token as access token": lambda api, u: api.sign(_claims(u, typ="stream")),
    "signature of another token": lambda api, u: (
        api.sign(_claims(u)).rsplit(".", 1)[0]
        + "."
        + api.sign(_claims(u, role="admin")).rsplit(".", 1)[1]
    ),
    "malformed: not a JWT": lambda api, u: "not-a-jwt",
    "malformed: two segments": lambda api, u: ".".join(api.sign(_claims(u)).split(".")[:2]),
    "malformed: header not JSON": lambda api, u: f"{_b64(b'{nope')}.{_b64(b'{}')}.{_b64(b'x')}",
    "malformed: empty": lambda api, u: "",
}


@pytest.fixture(params=["HS256", "RS256"])
def api_config(request: pytest.FixtureRequest, settings: Settings) -> Api:
    common = {"jwt_audience": AUDIENCE, "jwt_issuer": ISSUER, "jwt_algorithm": request.param}
    if request.param == "HS256":
        return Api("HS256", settings.model_copy(update=common), settings.jwt_secret or "")
    keys = {"jwt_public_key": PUBLIC_KEY, "jwt_private_key": PRIVATE_KEY, "jwt_secret": None}
    return Api("RS256", settings.model_copy(update=common | keys), PRIVATE_KEY)


@pytest.fixture
async def api_client(api_config: Api, clean: None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_config.settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


async def test_s4_jwt_matrix_is_refused(
    api_config: Api, api_client: httpx.AsyncClient, alice: ApiUser
) -> None:
    good = api_config.sign(_claims(alice))
    accepted = await api_client.get(PATH, headers={"Authorization": f"Bearer {good}"})
    assert accepted.status_code == 200, accepted.text  # the control

    not_refused = {}
    for case, forge in MATRIX.items():
        token = forge(api_config, alice)
        response = await api_client.get(PATH, headers={"Authorization": f"Bearer {token}"})
        body = response.json()
        if (
            response.status_code != 401
            or response.headers.get("www-authenticate") != "Bearer"
            or body.get("error", {}).get("code") != "unauthorized"
        ):
            not_refused[case] = (response.status_code, body)
    refused = len(MATRIX) - len(not_refused)
    figure("S4", f"{api_config.algorithm}: {refused}/{len(MATRIX)} forged or broken tokens: 401")
    assert not not_refused


async def test_s4_forged_stream_tokens_are_refused(
    client: httpx.AsyncClient, settings: Settings, alice: ApiUser
) -> None:
    """The browsers' `?stream_token=` (HS256 with the stream key): the same kinds of forgery."""
    session = await client.post("/api/v1/practice/sessions", json={}, headers=alice.headers)
    session_id = session.json()["practice_session_id"]
    scope = f"session:{session_id}"
    issued = await client.post(
        f"/api/v1/tasks/analysis/session/{session_id}/stream-token", headers=alice.headers
    )
    claims = jwt.decode(
        issued.json()["stream_token"], options={"verify_signature": False}
    )  # the real claims, to forge from
    assert claims["scope"] == scope
    key = settings.jwt_secret or ""
    now = int(time.time())
    forged = {
        "alg none": _unsigned({"alg": "none"}, claims) + ".",
        "wrong key": jwt.encode(claims, secrets.token_urlsafe(48), algorithm="HS256"),
        "expired": jwt.encode(claims | {"exp": now - 30}, key, algorithm="HS256"),
        "future nbf": jwt.encode(claims | {"nbf": now + 600}, key, algorithm="HS256"),
        "no exp": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, key, "HS256"),
        "another scope": jwt.encode(claims | {"scope": f"session:{uuid.uuid4()}"}, key, "HS256"),
        "access type": jwt.encode(claims | {"typ": "access"}, key, algorithm="HS256"),
        "malformed": "x.y.z",
    }
    url = f"/api/v1/tasks/analysis/session/{session_id}/events?stream_token="
    not_refused = {}
    for case, token in forged.items():
        response = await client.get(url + token)
        if response.status_code != 401 or response.json()["error"]["code"] != "unauthorized":
            not_refused[case] = response.status_code
    figure("S4", f"stream tokens: {len(forged) - len(not_refused)}/{len(forged)} forged: 401")
    assert not not_refused
