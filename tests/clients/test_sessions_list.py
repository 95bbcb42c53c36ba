"""GET /api/v1/practice/sessions, the web page's session picker: the user's own sessions,
newest first; a bad limit is a 422 in the one error shape."""

from __future__ import annotations

import httpx

from tests.conftest import ApiUser


async def test_lists_only_the_users_sessions_newest_first(
    client: httpx.AsyncClient, alice: ApiUser, bob: ApiUser
) -> None:
    made = []
    for title in ("first", "second", "third"):
        response = await client.post(
            "/api/v1/practice/sessions", json={"title": title}, headers=alice.headers
        )
        made.append(response.json()["practice_session_id"])
    await client.post("/api/v1/practice/sessions", json={"title": "bob's"}, headers=bob.headers)

    listed = await client.get("/api/v1/practice/sessions", headers=alice.headers)
    assert listed.status_code == 200
    assert [s["practice_session_id"] for s in listed.json()] == made[::-1]
    two = await client.get("/api/v1/practice/sessions?limit=2", headers=alice.headers)
    assert [s["title"] for s in two.json()] == ["third", "second"]


async def test_bad_limit_and_no_token(client: httpx.AsyncClient, alice: ApiUser) -> None:
    for limit in ("0", "101", "x"):
        response = await client.get(
            f"/api/v1/practice/sessions?limit={limit}", headers=alice.headers
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
    response = await client.get("/api/v1/practice/sessions")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
