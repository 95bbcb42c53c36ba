"""The database itself rejects states the application must never write."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.conftest import MakeUser


async def _record(connection: AsyncConnection, user_id: uuid.UUID) -> uuid.UUID:
    session_id = await connection.scalar(
        text("INSERT INTO practice_sessions (user_id) VALUES (:u) RETURNING practice_session_id"),
        {"u": user_id},
    )
    record_id: uuid.UUID = await connection.scalar(
        text(
            "INSERT INTO practice_records (practice_session_id, audio_storage_key,"
            " audio_content_type, audio_size_bytes) VALUES (:s, :k, 'audio/wav', 10)"
            " RETURNING practice_record_id"
        ),
        {"s": session_id, "k": f"recordings/{uuid.uuid4().hex}.wav"},
    )
    return record_id


async def _task(
    connection: AsyncConnection, user_id: uuid.UUID, record_id: uuid.UUID, status: str = "pending"
) -> uuid.UUID:
    task_id: uuid.UUID = await connection.scalar(
        text(
            "INSERT INTO ai_analysis_tasks (practice_record_id, user_id, status)"
            " VALUES (:r, :u, :s) RETURNING task_id"
        ),
        {"r": record_id, "u": user_id, "s": status},
    )
    return task_id


async def test_bad_task_status_is_rejected(engine: AsyncEngine, make_user: MakeUser) -> None:
    user = await make_user()
    async with engine.begin() as connection:
        record_id = await _record(connection, user.user_id)
    with pytest.raises(IntegrityError, match="ck_ai_analysis_tasks_status"):
        async with engine.begin() as connection:
            await _task(connection, user.user_id, record_id, status="exploded")


async def test_bad_record_status_is_rejected(engine: AsyncEngine, make_user: MakeUser) -> None:
    user = await make_user()
    with pytest.raises(IntegrityError, match="ck_practice_records_record_status"):
        async with engine.begin() as connection:
            record_id = await _record(connection, user.user_id)
            await connection.execute(
                text(
                    "UPDATE practice_records SET record_status = 'lost'"
                    " WHERE practice_record_id = :r"
                ),
                {"r": record_id},
            )


async def test_score_above_100_is_rejected(engine: AsyncEngine, make_user: MakeUser) -> None:
    user = await make_user()
    async with engine.begin() as connection:
        task_id = await _task(connection, user.user_id, await _record(connection, user.user_id))
    with pytest.raises(IntegrityError, match="ck_ai_analysis_results_fluency_score"):
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO ai_analysis_results (task_id, fluency_score, detailed_analysis)"
                    " VALUES (:t, 101, '{}')"
                ),
                {"t": task_id},
            )


async def test_progress_above_100_is_rejected(engine: AsyncEngine, make_user: MakeUser) -> None:
    user = await make_user()
    async with engine.begin() as connection:
        task_id = await _task(connection, user.user_id, await _record(connection, user.user_id))
    with pytest.raises(IntegrityError, match="ck_ai_analysis_tasks_progress"):
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE ai_analysis_tasks SET progress = 101 WHERE task_id = :t"),
                {"t": task_id},
            )


async def test_second_active_task_for_a_record_is_rejected(
    engine: AsyncEngine, make_user: MakeUser
) -> None:
    user = await make_user()
    async with engine.begin() as connection:
        record_id = await _record(connection, user.user_id)
        await _task(connection, user.user_id, record_id, status="processing")
    with pytest.raises(IntegrityError, match="uq_ai_analysis_tasks_one_active_per_record"):
        async with engine.begin() as connection:
            await _task(connection, user.user_id, record_id, status="retry")


async def test_finished_tasks_do_not_block_a_new_one(
    engine: AsyncEngine, make_user: MakeUser
) -> None:
    user = await make_user()
    async with engine.begin() as connection:
        record_id = await _record(connection, user.user_id)
        await _task(connection, user.user_id, record_id, status="failure")
        await _task(connection, user.user_id, record_id, status="cancelled")
        await _task(connection, user.user_id, record_id, status="pending")
        count = await connection.scalar(
            text("SELECT count(*) FROM ai_analysis_tasks WHERE practice_record_id = :r"),
            {"r": record_id},
        )
    assert count == 3


async def test_one_result_per_task(engine: AsyncEngine, make_user: MakeUser) -> None:
    user = await make_user()
    insert = text("INSERT INTO ai_analysis_results (task_id, detailed_analysis) VALUES (:t, '{}')")
    async with engine.begin() as connection:
        task_id = await _task(connection, user.user_id, await _record(connection, user.user_id))
        await connection.execute(insert, {"t": task_id})
    with pytest.raises(IntegrityError, match="uq_ai_analysis_results_task_id"):
        async with engine.begin() as connection:
            await connection.execute(insert, {"t": task_id})
