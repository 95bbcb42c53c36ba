from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.users.models import Role
from tests.analysis.conftest import new_task
from tests.conftest import ApiUser, MakeUser


async def test_admin_task_api(
    client: httpx.AsyncClient, alice: ApiUser, make_user: MakeUser, engine: AsyncEngine
) -> None:
    admin = await make_user("root@example.test", Role.ADMIN)
    task_id = await new_task(client, alice)
    for method, path in (
        ("GET", "/api/v1/admin/tasks/stats"),
        ("DELETE", f"/api/v1/admin/tasks/{task_id}"),
        ("POST", f"/api/v1/admin/tasks/{task_id}/retry"),
        ("POST", "/api/v1/admin/tasks/cleanup"),
    ):
        response = await client.request(method, path, headers=alice.headers)
        assert response.status_code == 403, path

    stats = (await client.get("/api/v1/admin/tasks/stats", headers=admin.headers)).json()
    assert stats["by_status"] == {"pending": 1} and stats["queue_depth"] == 1
    (provider,) = stats["ai_providers"]  # AI_SERVICE_URL's, uncapped (AI_MAX_CONCURRENCY=0)
    assert provider["name"] == "default" and provider["breaker"] == "closed"
    assert provider["cap"] is None and provider["in_use"] is None
    assert stats["waiting_by_lane"] == {"interactive": 1}

    not_yet = await client.post(f"/api/v1/admin/tasks/{task_id}/retry", headers=admin.headers)
    assert not_yet.status_code == 409

    cancelled = await client.delete(f"/api/v1/admin/tasks/{task_id}", headers=admin.headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"

    retried = await client.post(f"/api/v1/admin/tasks/{task_id}/retry", headers=admin.headers)
    assert retried.status_code == 202
    retried_task = retried.json()
    assert retried_task["task_id"] != task_id and retried_task["status"] == "pending"
    owned = await client.get(
        f"/api/v1/tasks/analysis/{retried_task['task_id']}/status", headers=alice.headers
    )
    assert owned.status_code == 200  # the retry belongs to the recording's owner

    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET completed_at = now() - interval '8 days'"
                 " WHERE task_id = :t"),
            {"t": task_id},
        )  # fmt: skip
    cleaned = await client.post("/api/v1/admin/tasks/cleanup", headers=admin.headers)
    assert cleaned.json() == {"deleted_tasks": 1, "retention_days": 7}
    gone = await client.get(f"/api/v1/tasks/analysis/{task_id}/status", headers=alice.headers)
    assert gone.status_code == 404


async def test_an_admin_cancels_another_users_task_only_through_the_audited_route(
    client: httpx.AsyncClient, alice: ApiUser, make_user: MakeUser
) -> None:
    """The public cancel is the owner's: an administrator's cancel of someone else's task
    there answers like an unknown task and changes nothing (it would bypass the audit log);
    the admin route cancels it."""
    admin = await make_user("root@example.test", Role.ADMIN)
    task_id = await new_task(client, alice)
    public = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=admin.headers)
    assert public.status_code == 404 and public.json()["error"]["code"] == "not_found"
    status = await client.get(f"/api/v1/tasks/analysis/{task_id}/status", headers=alice.headers)
    assert status.json()["status"] == "pending"
    cancelled = await client.delete(f"/api/v1/admin/tasks/{task_id}", headers=admin.headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
