"""S3: every admin route, taken from the OpenAPI document (a new route is covered without
editing this test): anonymous 401, a user 403, in the one error shape, and before anything
else is looked at: a malformed id or body still gets 401/403, never a 422 that would let a
caller without the role probe the route's parameters. tests/ops/test_audit.py checks the
same routes' audit trail."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import ApiUser
from tests.security.conftest import figure

pytestmark = pytest.mark.scenario("S3")

ADMIN_PREFIX = "/api/v1/admin"
METHODS = {"get", "post", "put", "patch", "delete"}


def _admin_operations(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        if path.startswith(ADMIN_PREFIX)
        for method in item
        if method in METHODS
    )


def _fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, template)


def _error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    return str(body["error"]["code"])


async def test_s3_every_admin_route_refuses_anonymous_and_users(
    app: FastAPI, client: httpx.AsyncClient, alice: ApiUser
) -> None:
    operations = _admin_operations(app)
    assert ("GET", f"{ADMIN_PREFIX}/users") in operations and len(operations) >= 6
    refused = 0
    for method, template in operations:
        for path in (_fill(template, str(uuid.uuid4())), _fill(template, "not-an-id")):
            for body in (None, "{not json"):
                anonymous = await client.request(method, path, content=body)
                assert anonymous.status_code == 401, (method, path, anonymous.text)
                assert anonymous.headers["www-authenticate"] == "Bearer"
                assert _error_code(anonymous) == "unauthorized"

                bad_token = {"Authorization": "Bearer not-a-token"}
                forged = await client.request(method, path, content=body, headers=bad_token)
                assert forged.status_code == 401, (method, path, forged.text)

                user = await client.request(method, path, content=body, headers=alice.headers)
                assert user.status_code == 403, (method, path, user.text)
                assert _error_code(user) == "forbidden"
                refused += 3
    figure(
        "S3",
        f"{len(operations)} admin operations from the OpenAPI document, {refused} requests: "
        "anonymous 401, user 403",
    )
