"""The result cache by content (issue 14, item 5), against real PostgreSQL, Redis, an arq worker
and the fake AI service over HTTP: a submit of a recording (by SHA-256) with the parameters of
an earlier successful analysis of the same user's, under the same model, finishes at once with a
copy of that result; nothing else does."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.progress import stream_key, task_topic
from app.main import create_app
from app.settings import Settings
from app.users.models import Role
from tests.analysis.conftest import StartWorker, upload_recording, wait_for_status
from tests.conftest import ApiUser, MakeUser
from tests.events.conftest import read_events
from tests.fake_ai import FakeAI, status

SCORES = ("overall_score", "pronunciation_accuracy", "fluency_score", "rhythm_score")
PARAMETERS = {"language": "zh-TW", "target_text": "你好"}


@pytest.fixture
async def api(worker_settings: Settings, clean: None) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the workers' settings: both key results by the same AI service URL (and
    model version), as one deployment's processes do."""
    application = create_app(worker_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def _submit(
    api: httpx.AsyncClient,
    user: ApiUser,
    record_id: str,
    parameters: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body = {"practice_record_id": record_id, "parameters": parameters or PARAMETERS} | extra
    response = await api.post("/api/v1/tasks/analysis/submit", json=body, headers=user.headers)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _result(api: httpx.AsyncClient, user: ApiUser, task_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/v1/tasks/analysis/{task_id}/result", headers=user.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _analysed(
    api: httpx.AsyncClient, user: ApiUser, audio: bytes | None = None
) -> tuple[str, str, bytes]:
    """A recording of `user`'s, uploaded, submitted and analysed (a worker must be running):
    (record id, task id, its bytes)."""
    _, record_id, audio = await upload_recording(api, user, audio=audio)
    task_id = str((await _submit(api, user, record_id))["task_id"])
    final = await wait_for_status(api, user, task_id)
    assert final["status"] == "success", final
    return record_id, task_id, audio


def _lookups(outcome: str) -> float:
    labels = {"outcome": outcome}
    return REGISTRY.get_sample_value("vocalborn_result_cache_lookups_total", labels) or 0.0


async def _task_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM ai_analysis_tasks")) or 0)


async def test_the_same_recording_and_parameters_twice_is_one_ai_call(
    api: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    engine: AsyncEngine,
) -> None:
    """The acceptance test: one AI call, two tasks, identical scores, the second marked as
    reused with the source's id; finished at the submit (no job, no queue position), its
    status, result, record and live stream all saying so. A third submit, of the same bytes
    uploaded again as a new record, is a copy of the same source."""
    await start_worker()
    hits, misses = _lookups("hit"), _lookups("miss")
    record_id, first_id, audio = await _analysed(api, alice)
    assert fake_ai.call_count() == 1

    second = await _submit(api, alice, record_id)
    assert second["status"] == "success" and second["reused_from_task_id"] == first_id
    assert second["task_id"] != first_id
    assert second["job_id"] is None and second["queue_position"] is None
    assert second["estimated_completion_time"] is None

    first_result = await _result(api, alice, first_id)
    second_result = await _result(api, alice, second["task_id"])
    assert first_result["reused_from_task_id"] is None
    assert second_result["reused_from_task_id"] == first_id
    assert second_result["result_id"] != first_result["result_id"]
    own = ("task_id", "result_id", "completed_at", "reused_from_task_id")  # the task's own
    assert {k: v for k, v in second_result.items() if k not in own} == {
        k: v for k, v in first_result.items() if k not in own
    }
    assert all(second_result[score] == first_result[score] for score in SCORES)

    status_doc = (
        await api.get(f"/api/v1/tasks/analysis/{second['task_id']}/status", headers=alice.headers)
    ).json()
    assert status_doc["status"] == "success" and status_doc["progress"] == 100
    assert status_doc["current_step"]["code"] == "completed"
    assert status_doc["completed_at"] is not None and status_doc["queue_position"] is None
    async with engine.connect() as connection:
        record = (
            await connection.execute(
                text(
                    "SELECT record_status, ai_task_id FROM practice_records"
                    " WHERE practice_record_id = :r"
                ),
                {"r": record_id},
            )
        ).one()
    assert record.record_status == "ai_analyzed" and str(record.ai_task_id) == second["task_id"]

    # The live stream: the terminal state at once, then its end.
    async with api.stream(
        "GET", f"/api/v1/tasks/analysis/{second['task_id']}/events", headers=alice.headers
    ) as response:
        events = await read_events(response.aiter_lines())
    assert [event.json()["status"] for event in events] == ["success"]

    # The same bytes as another record (another session): the same source, no AI call.
    _, again_record, _ = await upload_recording(api, alice, audio=audio)
    third = await _submit(api, alice, again_record)
    assert third["status"] == "success" and third["reused_from_task_id"] == first_id
    third_result = await _result(api, alice, third["task_id"])
    assert all(third_result[score] == first_result[score] for score in SCORES)

    assert fake_ai.call_count() == 1
    assert fake_ai.calls[0].body_sha256 == hashlib.sha256(audio).hexdigest()
    assert await _task_count(engine) == 3
    assert (_lookups("hit") - hits, _lookups("miss") - misses) == (2, 1)


async def test_fresh_analyses_again(
    api: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    await start_worker()
    fresh_before = _lookups("fresh")
    record_id, _, _ = await _analysed(api, alice)
    again = await _submit(api, alice, record_id, fresh=True)
    assert again["status"] == "pending" and again["reused_from_task_id"] is None
    final = await wait_for_status(api, alice, again["task_id"])
    assert final["status"] == "success", final
    assert fake_ai.call_count() == 2
    assert (await _result(api, alice, again["task_id"]))["reused_from_task_id"] is None
    assert _lookups("fresh") == fresh_before + 1


async def test_another_users_identical_recording_is_analysed(
    api: httpx.AsyncClient,
    alice: ApiUser,
    bob: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    _, _, audio = await _analysed(api, alice)
    _, record_id, bobs = await upload_recording(api, bob, audio=audio)
    assert bobs == audio
    submitted = await _submit(api, bob, record_id)
    assert submitted["status"] == "pending" and submitted["reused_from_task_id"] is None
    final = await wait_for_status(api, bob, submitted["task_id"])
    assert final["status"] == "success", final
    assert fake_ai.call_count() == 2
    assert (await _result(api, bob, submitted["task_id"]))["reused_from_task_id"] is None


@pytest.mark.parametrize(
    "parameters",
    [
        {"language": "en-US", "target_text": "你好"},
        {"language": "zh-TW", "target_text": "再見"},
        PARAMETERS | {"analysis_type": "quick"},
        PARAMETERS | {"model_version": "v2"},
    ],
    ids=["language", "target_text", "analysis_type", "model_version"],
)
async def test_other_parameters_are_analysed(
    api: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    parameters: dict[str, Any],
) -> None:
    await start_worker()
    record_id, _, _ = await _analysed(api, alice)
    submitted = await _submit(api, alice, record_id, parameters)
    assert submitted["status"] == "pending" and submitted["reused_from_task_id"] is None
    assert (await wait_for_status(api, alice, submitted["task_id"]))["status"] == "success"
    assert fake_ai.call_count() == 2


async def test_a_failed_first_analysis_is_never_reused(
    api: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    """A 422 (the recording refused) fails the first task; a submit again calls the AI."""
    fake_ai.then(status(422))
    await start_worker()
    _, record_id, _ = await upload_recording(api, alice)
    first = await _submit(api, alice, record_id)
    assert (await wait_for_status(api, alice, first["task_id"]))["status"] == "failure"
    second = await _submit(api, alice, record_id)
    assert second["status"] == "pending" and second["reused_from_task_id"] is None
    assert (await wait_for_status(api, alice, second["task_id"]))["status"] == "success"
    assert fake_ai.call_count() == 2


@pytest.mark.parametrize("change", ["model", "no_hash"])
async def test_another_model_or_a_record_without_hash_is_analysed(
    api: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    engine: AsyncEngine,
    change: str,
) -> None:
    """`model`: the earlier result was produced under another AI_MODEL_VERSION (or service);
    `no_hash`: the record was uploaded before hashes were stored."""
    await start_worker()
    record_id, _, _ = await _analysed(api, alice)
    statement = {
        "model": "UPDATE ai_analysis_results SET cache_model = cache_model || '#old'",
        "no_hash": "UPDATE practice_records SET audio_sha256 = NULL",
    }[change]
    async with engine.begin() as connection:
        assert (await connection.execute(text(statement))).rowcount == 1
    submitted = await _submit(api, alice, record_id)
    assert submitted["status"] == "pending" and submitted["reused_from_task_id"] is None
    assert (await wait_for_status(api, alice, submitted["task_id"]))["status"] == "success"
    assert fake_ai.call_count() == 2


async def test_a_session_submit_reuses_per_recording(
    api: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    """A session of two recordings, one with the bytes of an earlier analysis: that one
    finishes at once (its terminal state published on its streams), the other is analysed."""
    await start_worker()
    _, first_id, audio = await _analysed(api, alice)
    session_id, same_record, _ = await upload_recording(api, alice, audio=audio)
    _, other_record, _ = await upload_recording(api, alice, session_id=session_id)
    response = await api.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_session_id": session_id, "parameters": PARAMETERS},
        headers=alice.headers,
    )
    assert response.status_code == 202, response.text
    tasks = {task["practice_record_id"]: task for task in response.json()["tasks"]}
    assert tasks[same_record]["status"] == "success"
    assert tasks[same_record]["reused_from_task_id"] == first_id
    assert tasks[other_record]["status"] == "pending"
    assert tasks[other_record]["reused_from_task_id"] is None
    reused_id = tasks[same_record]["task_id"]
    entries = await redis.xrange(stream_key(task_topic(reused_id)))
    assert [b'"status":"success"' in fields[b"doc"] for _, fields in entries] == [True]

    final = await wait_for_status(api, alice, tasks[other_record]["task_id"])
    assert final["status"] == "success", final
    assert fake_ai.call_count() == 2


async def test_a_copy_of_a_copy_names_the_analysis_that_ran(
    api: httpx.AsyncClient,
    alice: ApiUser,
    make_user: MakeUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """The newest success is a copy: the next copy names the original. The admin stats count
    both hits; their mean processing time is the one analysis's (copies never start)."""
    await start_worker()
    record_id, first_id, _ = await _analysed(api, alice)
    second = await _submit(api, alice, record_id)
    third = await _submit(api, alice, record_id)
    assert second["reused_from_task_id"] == first_id == third["reused_from_task_id"]
    assert len({second["task_id"], third["task_id"], first_id}) == 3
    assert fake_ai.call_count() == 1

    admin = await make_user(role=Role.ADMIN)
    response = await api.get("/api/v1/admin/tasks/stats", headers=admin.headers)
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["cache_hits_last_hour"] == 2 and stats["by_status"] == {"success": 3}
    first = await api.get(f"/api/v1/tasks/analysis/{first_id}/status", headers=alice.headers)
    took = (
        datetime.fromisoformat(first.json()["completed_at"])
        - datetime.fromisoformat(first.json()["started_at"])
    ).total_seconds()
    assert stats["mean_processing_seconds_last_hour"] == pytest.approx(took, abs=0.01)
