"""Cancels that race the end of an attempt, worker shutdowns, a busy AI service, budgets."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import lifecycle
from tests.analysis.conftest import (
    StartWorker,
    new_task,
    record_status,
    submit,
    task_status,
    upload_recording,
    wait_for,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.fake_ai import HANG, FakeAI, ok, status


async def test_cancel_during_a_retry_decision_cancels_the_task(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine, pg: asyncpg.Pool
) -> None:
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    claimed = await lifecycle.claim(pg, task_id, f"{task_id}:0", "worker-a", lease=30)
    assert claimed is not None
    # The user cancels while the attempt is deciding to retry after a 503.
    response = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=alice.headers)
    assert response.json()["status"] == "processing" and response.json()["cancel_requested"]
    retry = await lifecycle.schedule_retry(pg, claimed, 1.0, "network", "503", budget=5)
    assert retry is None  # the cancel wins: no retry is scheduled over it
    assert await lifecycle.fail(pg, claimed, "network", "503") is None
    cancelled = await lifecycle.mark_cancelled(pg, claimed)
    assert cancelled is not None and cancelled["status"] == "cancelled"
    assert await record_status(engine, record_id) == "recorded"


async def test_reconciler_finishes_a_stranded_cancel(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    start_worker: StartWorker,
) -> None:
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    async with engine.begin() as connection:  # a retry row with a cancel nobody finished
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET status = 'retry', cancel_requested_at = now(),"
                 " next_attempt_at = now() + interval '1 hour' WHERE task_id = :t"),
            {"t": task_id},
        )  # fmt: skip
    await start_worker()
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "cancelled"
    assert await record_status(engine, record_id) == "recorded"


async def test_worker_shutdown_hands_the_task_back_without_counting_a_crash(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    fake_ai.reset(default=HANG)
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    worker = await start_worker(
        lease_seconds=60.0, ai_deadline_seconds=30.0, job_timeout_seconds=40.0
    )
    await wait_for_status(client, alice, task_id, {"processing"})

    async def ai_called() -> bool:
        return fake_ai.call_count() == 1

    await wait_for(ai_called)
    await worker.close()  # what SIGTERM does once the grace period is over
    handed_back = await task_status(client, alice, task_id)
    assert handed_back["status"] == "retry" and handed_back["retry_count"] == 0
    assert await record_status(engine, record_id) == "ai_queued"

    fake_ai.reset(default=ok())
    await start_worker(lease_seconds=60.0)
    final = await wait_for_status(client, alice, task_id, within=10)  # not a lease later
    assert final["status"] == "success" and final["retry_count"] == 0
    async with engine.connect() as connection:
        crashes = await connection.scalar(
            text("SELECT crash_count FROM ai_analysis_tasks WHERE task_id = :t"), {"t": task_id}
        )
    assert crashes == 0


async def test_busy_ai_service_defers_without_spending_the_budget(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    fake_ai.then(status(503, retry_after="1"), times=6)
    task_id = await new_task(client, alice)
    await start_worker(breaker_failure_threshold=2)
    waiting = await wait_for_status(client, alice, task_id, {"retry"})
    assert waiting["error_code"] == "ai_busy"
    final = await wait_for_status(client, alice, task_id, within=30)
    assert final["status"] == "success"
    assert final["retry_count"] == 0  # six deferrals, no retry spent, no breaker tripped
    assert fake_ai.call_count() == 7
    assert not await redis.exists("vocalborn:breaker:ai:open")


async def test_each_error_class_has_its_own_budget(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    # Two network errors, then two timeouts: within the network (5) and timeout (2) budgets,
    # though four retries in all exceed the timeout budget.
    fake_ai.then(status(503), status(503), HANG, HANG)
    task_id = await new_task(client, alice)
    await start_worker(ai_deadline_seconds=1.0)
    final = await wait_for_status(client, alice, task_id, within=40)
    assert final["status"] == "success", final
    assert final["retry_count"] == 4


async def test_failed_reanalysis_leaves_the_record_analysed(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    engine: AsyncEngine,
) -> None:
    _, record_id, _ = await upload_recording(client, alice)
    first = (await submit(client, alice, record_id))["task_id"]
    await start_worker()
    assert (await wait_for_status(client, alice, first))["status"] == "success"
    fake_ai.reset(default=status(422))
    second = (await submit(client, alice, record_id))["task_id"]
    assert second != first
    assert (await wait_for_status(client, alice, second))["status"] == "failure"
    assert await record_status(engine, record_id) == "ai_analyzed"


async def test_idempotency_key_alone_deduplicates(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    session_id, record_id, _ = await upload_recording(client, alice)
    records = [record_id]
    for _ in range(4):
        records.append((await upload_recording(client, alice, session_id=session_id))[1])
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/v1/tasks/analysis/submit",
                json={"practice_record_id": r},
                headers=alice.headers | {"Idempotency-Key": "one-key"},
            )
            for r in records
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 422, 422, 422, 422]
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 422} == {
        "idempotency_key_reused"
    }
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM ai_analysis_tasks")) == 1


async def test_a_service_busy_forever_fails_the_task_in_the_end(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    fake_ai.reset(default=status(503, retry_after="0"))
    task_id = await new_task(client, alice)
    await start_worker(max_deferrals=2)
    final = await wait_for_status(client, alice, task_id, within=40)
    assert final["status"] == "failure" and final["error_code"] == "network"
    assert final["retry_count"] == 5  # two deferrals, then the network budget
    assert fake_ai.call_count() == 2 + 5 + 1
    # Busy is no ill health, even past the deferrals: the breaker counted nothing.
    assert await redis.get("vocalborn:breaker:ai:failures") is None


async def test_a_circuit_that_stays_open_fails_the_task_without_reopening_itself(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    await redis.set("vocalborn:breaker:ai:open", "1", px=60_000)  # opened by earlier failures
    task_id = await new_task(client, alice)
    await start_worker(max_deferrals=0)
    final = await wait_for_status(client, alice, task_id, {"retry", "failure"})
    assert final["error_code"] == "network"
    assert fake_ai.call_count() == 0
    # Only the AI service's own failures count: the breaker's state is as the test left it.
    assert await redis.get("vocalborn:breaker:ai:failures") is None
    assert await redis.pttl("vocalborn:breaker:ai:open") > 50_000
