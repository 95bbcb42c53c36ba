"""The audit log of admin actions (issue 16, item 5): every admin route, found in the OpenAPI
document so that a new one is covered without editing this file, refuses anonymous (401) and
non-admin (403) callers and records exactly one event per admin call; a cancel commits with
its event; the log is append-only, filtered and paged, and cleanup never deletes it."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from app.settings import Settings
from app.users.models import Role
from tests.analysis.conftest import new_task
from tests.conftest import ApiUser, MakeUser

ADMIN_PREFIX = "/api/v1/admin"


def admin_operations() -> list[tuple[str, str]]:
    """(method, path template) of every admin operation the application documents."""
    settings = Settings(_env_file=None, environment="test", jwt_secret="x" * 48)  # type: ignore[call-arg]
    document: dict[str, Any] = create_app(settings).openapi()
    return sorted(
        (method.upper(), path)
        for path, item in document["paths"].items()
        if path.startswith(ADMIN_PREFIX)
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    )


OPERATIONS = admin_operations()
# The body of each admin operation that takes one (a request without it is refused 422 before
# the route runs, by FastAPI: a malformed request does nothing to audit).
BODIES: dict[str, dict[str, Any]] = {f"{ADMIN_PREFIX}/tasks/{{task_id}}/lane": {"lane": "batch"}}


def test_the_admin_routes_are_found() -> None:
    assert ("GET", f"{ADMIN_PREFIX}/audit") in OPERATIONS
    assert len(OPERATIONS) >= 6


async def audit_rows(engine: AsyncEngine, actor: uuid.UUID) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM audit_events WHERE actor_id = :a ORDER BY event_id"), {"a": actor}
        )
        return [dict(row) for row in rows.mappings()]


@pytest.mark.parametrize(("method", "template"), OPERATIONS)
async def test_every_admin_route_is_guarded_and_audited(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    alice: ApiUser,
    engine: AsyncEngine,
    method: str,
    template: str,
) -> None:
    admin = await make_user(role=Role.ADMIN)
    task_id = await new_task(client, alice)
    path = re.sub(r"\{task_id\}", task_id, template)
    assert "{" not in path, f"no value for a parameter of {template}: extend this test"

    body = BODIES.get(template)
    anonymous = await client.request(method, path, json=body)
    assert anonymous.status_code == 401, anonymous.text
    user = await client.request(method, path, headers=alice.headers, json=body)
    assert user.status_code == 403, user.text
    assert await audit_rows(engine, alice.user_id) == []

    request_id = f"req-{uuid.uuid4().hex}"
    answer = await client.request(
        method, path, headers=admin.headers | {"X-Request-ID": request_id}, json=body
    )
    assert answer.status_code < 500, answer.text
    [event] = await audit_rows(engine, admin.user_id)
    assert event["request_id"] == request_id
    assert event["action"] and event["occurred_at"] is not None
    expected = "ok" if answer.status_code < 400 else answer.json()["error"]["code"]
    assert event["outcome"] == expected
    if "{task_id}" in template:
        assert event["target"] == f"task:{task_id}"


async def test_cancel_and_its_event_commit_together_and_a_refusal_is_recorded(
    client: httpx.AsyncClient, make_user: MakeUser, alice: ApiUser, engine: AsyncEngine
) -> None:
    admin = await make_user(role=Role.ADMIN)
    task_id = await new_task(client, alice)
    cancelled = await client.delete(f"{ADMIN_PREFIX}/tasks/{task_id}", headers=admin.headers)
    assert cancelled.status_code == 202
    again = await client.delete(f"{ADMIN_PREFIX}/tasks/{task_id}", headers=admin.headers)
    assert again.status_code == 409
    async with engine.connect() as connection:
        same_transaction = await connection.scalar(
            text(
                "SELECT t.xmin::text = e.xmin::text FROM ai_analysis_tasks t, audit_events e"
                " WHERE t.task_id = :t AND e.actor_id = :a AND e.outcome = 'ok'"
            ),
            {"t": task_id, "a": admin.user_id},
        )
    assert same_transaction is True
    events = await audit_rows(engine, admin.user_id)
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("task.cancel", "ok"),
        ("task.cancel", "task_finished"),
    ]


async def test_a_retry_and_its_event_commit_together(
    client: httpx.AsyncClient, make_user: MakeUser, alice: ApiUser, engine: AsyncEngine
) -> None:
    admin = await make_user(role=Role.ADMIN)
    task_id = await new_task(client, alice)
    await client.delete(f"{ADMIN_PREFIX}/tasks/{task_id}", headers=admin.headers)
    retried = await client.post(f"{ADMIN_PREFIX}/tasks/{task_id}/retry", headers=admin.headers)
    assert retried.status_code == 202
    async with engine.connect() as connection:
        same_transaction = await connection.scalar(
            text(
                "SELECT t.xmin::text = e.xmin::text FROM ai_analysis_tasks t, audit_events e"
                " WHERE t.task_id = :t AND e.actor_id = :a AND e.action = 'task.retry'"
            ),
            {"t": retried.json()["task_id"], "a": admin.user_id},
        )
    assert same_transaction is True


async def test_the_log_is_append_only_and_outlives_cleanup(
    client: httpx.AsyncClient, make_user: MakeUser, alice: ApiUser, engine: AsyncEngine
) -> None:
    admin = await make_user(role=Role.ADMIN)
    task_id = await new_task(client, alice)
    await client.delete(f"{ADMIN_PREFIX}/tasks/{task_id}", headers=admin.headers)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET completed_at = now() - interval '30 days'")
        )
    cleaned = await client.post(f"{ADMIN_PREFIX}/tasks/cleanup", headers=admin.headers)
    assert cleaned.json()["deleted_tasks"] == 1
    assert len(await audit_rows(engine, admin.user_id)) == 2

    for statement in (
        "UPDATE audit_events SET outcome = 'forged'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as connection:
                await connection.execute(text(statement))
    assert [e["outcome"] for e in await audit_rows(engine, admin.user_id)] == ["ok", "ok"]


async def test_filters_and_paging(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(role=Role.ADMIN)
    other = await make_user(role=Role.ADMIN)
    for _ in range(3):
        await client.get(f"{ADMIN_PREFIX}/users", headers=admin.headers)
    await client.get(f"{ADMIN_PREFIX}/tasks/stats", headers=other.headers)

    url = f"{ADMIN_PREFIX}/audit"
    mine = {"actor_id": str(admin.user_id), "action": "users.list", "limit": "2"}
    first = (await client.get(url, params=mine, headers=other.headers)).json()
    assert len(first["events"]) == 2 and first["next_before_id"] is not None
    rest = (
        await client.get(
            url, params=mine | {"before_id": first["next_before_id"]}, headers=other.headers
        )
    ).json()
    assert len(rest["events"]) == 1 and rest["next_before_id"] is None
    ids = [e["event_id"] for e in first["events"] + rest["events"]]
    assert ids == sorted(ids, reverse=True)  # newest first, no event twice
    assert {e["actor_id"] for e in first["events"] + rest["events"]} == {str(admin.user_id)}

    # The log is never cleaned, so events of earlier tests are there too: filter by actor.
    for actor, expected in ((other, ["tasks.stats"]), (admin, [])):
        found = await client.get(
            url,
            params={"action": "tasks.stats", "actor_id": str(actor.user_id)},
            headers=admin.headers,
        )
        assert [e["action"] for e in found.json()["events"]] == expected
