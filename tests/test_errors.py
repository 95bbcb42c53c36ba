from __future__ import annotations

import httpx

from tests.conftest import ApiUser


async def test_unknown_route_has_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}


async def test_validation_error_has_the_error_shape(
    client: httpx.AsyncClient, alice: ApiUser
) -> None:
    response = await client.get("/api/v1/practice/sessions/not-a-uuid", headers=alice.headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["fields"][0]["loc"] == ["path", "session_id"]


async def test_wrong_method_has_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/v1/practice/sessions")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
