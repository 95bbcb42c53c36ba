"""The API chooses the lane (a single submit interactive; session submits, admin retries and
re-analyses batch), shows it in every task document, and an admin moves a task to another
lane through an audited route that re-scores its waiting job."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import lanes, queue
from app.users.models import Role
from tests.analysis.conftest import submit, task_status, upload_recording
from tests.conftest import ApiUser, MakeUser


async def _score(redis: Redis, task: dict[str, object]) -> float | None:
    return await redis.zscore(queue.QUEUE_NAME, str(task["job_id"]))


async def test_the_api_chooses_the_lane(
    client: httpx.AsyncClient, alice: ApiUser, make_user: MakeUser, engine: AsyncEngine
) -> None:
    admin = await make_user("root@example.test", Role.ADMIN)
    session_id, record_id, _ = await upload_recording(client, alice)
    single = await submit(client, alice, record_id)
    assert single["lane"] == "interactive"
    assert (await task_status(client, alice, single["task_id"]))["lane"] == "interactive"

    await upload_recording(client, alice, session_id=session_id)
    response = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_session_id": session_id},
        headers=alice.headers,
    )
    assert response.status_code == 202, response.text
    assert [t["lane"] for t in response.json()["tasks"]] == ["batch"]

    cancelled = await client.delete(
        f"/api/v1/admin/tasks/{single['task_id']}", headers=admin.headers
    )
    assert cancelled.status_code == 202
    retried = await client.post(
        f"/api/v1/admin/tasks/{single['task_id']}/retry", headers=admin.headers
    )
    assert retried.status_code == 202 and retried.json()["lane"] == "batch"

    # The record analysed once: a new submit of it is a re-analysis.
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE ai_analysis_tasks SET status = 'success'"))
    again = await submit(client, alice, record_id)
    assert again["lane"] == "batch"


async def test_an_admin_moves_a_task_to_another_lane(
    client: httpx.AsyncClient, alice: ApiUser, make_user: MakeUser, redis: Redis
) -> None:
    admin = await make_user("root@example.test", Role.ADMIN)
    session_id, _, _ = await upload_recording(client, alice)
    for _ in range(4):
        await upload_recording(client, alice, session_id=session_id)
    response = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_session_id": session_id},
        headers=alice.headers,
    )
    tasks = response.json()["tasks"]
    last = max(tasks, key=lambda t: t["queue_position"])
    assert last["queue_position"] == 5 and last["lane"] == "batch"
    path = f"/api/v1/admin/tasks/{last['task_id']}/lane"

    refused = await client.put(path, json={"lane": "interactive"}, headers=alice.headers)
    assert refused.status_code == 403
    bad = await client.put(path, json={"lane": "express"}, headers=admin.headers)
    assert bad.status_code == 422

    moved = await client.put(path, json={"lane": "interactive"}, headers=admin.headers)
    assert moved.status_code == 200, moved.text
    document = moved.json()
    assert document["lane"] == "interactive"
    # Re-scored at the interactive flow's first tag: with the first batch job, ahead of the rest.
    assert await _score(redis, last) == lanes.FAIR_EPOCH_MS
    assert document["queue_position"] in (1, 2)

    audit = await client.get(
        "/api/v1/admin/audit", params={"target": f"task:{last['task_id']}"}, headers=admin.headers
    )
    events = [(e["action"], e["outcome"]) for e in audit.json()["events"]]
    assert ("task.lane.interactive", "ok") in events

    await client.delete(f"/api/v1/admin/tasks/{last['task_id']}", headers=admin.headers)
    finished = await client.put(path, json={"lane": "batch"}, headers=admin.headers)
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "task_finished"
    unknown = await client.put(
        "/api/v1/admin/tasks/00000000-0000-0000-0000-000000000000/lane",
        json={"lane": "batch"},
        headers=admin.headers,
    )
    assert unknown.status_code == 404
