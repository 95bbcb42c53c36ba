"""S2: user B on user A's task, result, events, stream tokens, cancel, session and record: 404,
byte for byte the answer to an id nobody has (status, body, headers but the per-response
ones), so B cannot even learn that the id exists; and nothing of A's changes."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analysis.conftest import submit, upload_recording
from tests.conftest import ApiUser
from tests.security.conftest import figure

pytestmark = pytest.mark.scenario("S2")

# Set per response (a request id, the time): the only headers allowed to differ.
PER_RESPONSE_HEADERS = {"date", "x-request-id"}
IDEMPOTENCY_KEY = "alice-key-1"


def _requests(task: str, session: str, record: str) -> list[tuple[str, str, dict[str, object]]]:
    """(method, path, httpx options) of everything a user may do with these ids."""
    tasks, practice = "/api/v1/tasks/analysis", "/api/v1/practice"
    return [
        ("GET", f"{tasks}/{task}/status", {}),
        ("GET", f"{tasks}/{task}/result", {}),
        ("GET", f"{tasks}/{task}/events", {}),
        ("POST", f"{tasks}/{task}/stream-token", {}),
        ("DELETE", f"{tasks}/{task}", {}),
        ("GET", f"{tasks}/session/{session}/status", {}),
        ("GET", f"{tasks}/session/{session}/events", {}),
        ("POST", f"{tasks}/session/{session}/stream-token", {}),
        ("GET", f"{practice}/sessions/{session}", {}),
        ("GET", f"{practice}/records/{record}", {}),
        (
            "POST",
            f"{practice}/sessions/{session}/records",
            {"files": {"audio": ("b.wav", b"RIFF....WAVEfmt ", "audio/wav")}},
        ),
        (
            "POST",
            f"{tasks}/submit",
            {
                "json": {"practice_record_id": record},
                "headers": {"Idempotency-Key": IDEMPOTENCY_KEY},
            },
        ),
        ("POST", f"{tasks}/submit", {"json": {"practice_session_id": session}}),
    ]


async def _answer(
    client: httpx.AsyncClient, user: ApiUser, method: str, path: str, options: dict[str, object]
) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = user.headers | dict(options.pop("headers", {}))  # type: ignore[arg-type]
    response = await client.request(method, path, headers=headers, **options)  # type: ignore[arg-type]
    kept = sorted((k, v) for k, v in response.headers.items() if k not in PER_RESPONSE_HEADERS)
    return response.status_code, response.content, kept


async def _tasks_of(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT task_id, user_id, status, cancel_requested_at, updated_at"
                " FROM ai_analysis_tasks ORDER BY task_id"
            )
        )
        return [tuple(row) for row in rows]


async def test_s2_another_users_ids_answer_exactly_like_unknown_ids(
    client: httpx.AsyncClient, alice: ApiUser, bob: ApiUser, engine: AsyncEngine
) -> None:
    session_id, record_id, _ = await upload_recording(client, alice)
    task_id = str(
        (await submit(client, alice, record_id, **{"Idempotency-Key": IDEMPOTENCY_KEY}))["task_id"]
    )
    rows_before = await _tasks_of(engine)

    alices = _requests(task_id, session_id, record_id)
    unknown = _requests(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()))
    compared = 0
    for (method, path, options), (_, unknown_path, unknown_options) in zip(
        alices, unknown, strict=True
    ):
        on_alices = await _answer(client, bob, method, path, dict(options))
        on_nobodys = await _answer(client, bob, method, unknown_path, dict(unknown_options))
        assert on_alices[0] == 404, (method, path, on_alices)
        assert on_alices == on_nobodys, (method, path)
        compared += 1

    # Nothing of Alice's changed: her task is as it was, Bob has no task, no stored upload.
    assert await _tasks_of(engine) == rows_before
    async with engine.connect() as connection:
        records = await connection.scalar(text("SELECT count(*) FROM practice_records"))
    assert records == 1  # Alice's only: Bob's upload into her session stored nothing
    figure("S2", f"{compared} requests by user B on user A's ids: 404, identical to unknown ids")
