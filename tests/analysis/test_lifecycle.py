"""The core flow against real PostgreSQL, Redis, arq workers and an AI service over HTTP."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analysis.conftest import (
    StartWorker,
    new_task,
    record_status,
    submit,
    task_status,
    upload_recording,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.fake_ai import HANG, MALFORMED, NAN, NUL, SURROGATE, FakeAI, Mode, ok, status


async def test_happy_path(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    engine: AsyncEngine,
) -> None:
    fake_ai.reset(default=ok(latency=1.0))
    finished_before = _sample("vocalborn_tasks_finished_total", status="success")
    _, record_id, audio = await upload_recording(client, alice, seconds=2.0)
    submitted = await submit(client, alice, record_id)
    assert submitted["status"] == "pending"
    assert submitted["job_id"] == f"{submitted['task_id']}:0"
    assert submitted["queue_position"] == 1
    assert submitted["estimated_completion_time"] is not None
    assert await record_status(engine, record_id) == "ai_queued"

    await start_worker()
    samples: list[dict[str, object]] = []
    final = await wait_for_status(client, alice, submitted["task_id"], samples=samples)

    assert final["status"] == "success", final
    assert final["progress"] == 100 and final["current_step"]["code"] == "completed"
    progress = [int(s["progress"]) for s in samples]  # type: ignore[call-overload]
    assert progress == sorted(progress), progress
    assert len({s["current_step"]["code"] for s in samples}) >= 3  # type: ignore[index]
    assert await record_status(engine, record_id) == "ai_analyzed"

    [call] = fake_ai.calls
    assert call.body_sha256 == hashlib.sha256(audio).hexdigest()
    assert call.headers["content-type"] == "audio/wav"
    assert call.headers["x-request-id"] == f"{submitted['task_id']}:1"
    assert call.query["language"] == "zh-TW"

    response = await client.get(
        f"/api/v1/tasks/analysis/{submitted['task_id']}/result", headers=alice.headers
    )
    assert response.status_code == 200
    result = response.json()
    for key, value in fake_ai.result.items():
        assert result[key] == value, key

    assert _sample("vocalborn_tasks_finished_total", status="success") == finished_before + 1
    metrics = (await client.get("/metrics/")).text
    assert "vocalborn_tasks_submitted_total" in metrics


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_503_twice_then_ok(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    fake_ai.then(status(503), times=2)
    task_id = await new_task(client, alice)
    await start_worker()
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "success"
    assert final["retry_count"] == 2
    assert fake_ai.call_count() == 3


@pytest.mark.parametrize("message", ["a\x00b", "a\ud800b"], ids=["NUL", "lone surrogate"])
async def test_an_error_message_postgres_refuses_is_kept_in_words(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    message: str,
) -> None:
    """The AI service's error message goes into the task's error_message (text): a NUL or an
    unpaired surrogate in it (valid JSON escapes) is written escaped (`storable_words`), and
    the task is retried as after any 503."""
    fake_ai.then(status(503, message=message))
    task_id = await new_task(client, alice)
    await start_worker()
    final = await wait_for_status(client, alice, task_id)
    # The retry was recorded (the write of a raw NUL failed: the attempt went unrecorded, its
    # retry budget unspent, and the reconciler ran it again).
    assert final["status"] == "success" and final["retry_count"] == 1


async def test_422_fails_at_once(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    engine: AsyncEngine,
) -> None:
    fake_ai.reset(default=status(422))
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    await start_worker()
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "failure"
    assert final["error_code"] == "validation"
    assert "422" in final["error_message"]
    assert fake_ai.call_count() == 1
    assert await record_status(engine, record_id) == "recorded"
    response = await client.get(f"/api/v1/tasks/analysis/{task_id}/result", headers=alice.headers)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "result_not_ready",
        "message": "The analysis ended without a result: its status is failure",
        "status": "failure",
    }


async def test_hang_times_out_retries_then_fails(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    fake_ai.reset(default=HANG)
    task_id = await new_task(client, alice)
    await start_worker(ai_deadline_seconds=1.0)
    final = await wait_for_status(client, alice, task_id, within=30)
    assert final["status"] == "failure"
    assert final["error_code"] == "timeout"
    assert final["retry_count"] == 2  # the seed's timeout budget
    assert fake_ai.call_count() == 3
    assert all(call.closed_by_client for call in fake_ai.calls)


async def test_rate_limit_honours_retry_after(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    fake_ai.then(status(429, retry_after="2"))
    task_id = await new_task(client, alice)
    await start_worker()
    waiting = await wait_for_status(client, alice, task_id, {"retry"})
    assert waiting["error_code"] == "ai_service"
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "success"
    first, second = fake_ai.calls
    assert second.at - first.at >= 2.0  # not before Retry-After, whatever the jitter drew


@pytest.mark.parametrize(
    "answer",
    [MALFORMED, NAN, NUL, SURROGATE],
    ids=["truncated-json", "nan-in-result", "nul-in-result", "surrogate-in-result"],
)
async def test_malformed_answer_is_an_ai_service_error(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    answer: Mode,
) -> None:
    fake_ai.then(answer)  # retried as `ai_service`, then the next answer is fine
    task_id = await new_task(client, alice)
    await start_worker()
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "success" and final["retry_count"] == 1


async def test_ai_down_then_back(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    fake_ai.stop()
    task_id = await new_task(client, alice)
    await start_worker()
    waiting = await wait_for_status(client, alice, task_id, {"retry"})
    assert waiting["error_code"] == "network"
    fake_ai.start()
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "success"
    assert final["retry_count"] >= 1


async def test_status_of_another_users_task_is_404(
    client: httpx.AsyncClient, alice: ApiUser, bob: ApiUser, fake_ai: FakeAI
) -> None:
    session_id, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    assert (await task_status(client, alice, task_id))["status"] == "pending"
    for path in (f"{task_id}/status", f"{task_id}/result", f"session/{session_id}/status"):
        response = await client.get(f"/api/v1/tasks/analysis/{path}", headers=bob.headers)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    response = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=bob.headers)
    assert response.status_code == 404
    response = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_record_id": record_id},
        headers=bob.headers,
    )
    assert response.status_code == 404
