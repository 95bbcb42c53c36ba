"""Rows and recordings for the scenarios, made fast: users, practice sessions, records and
pending tasks inserted with a few bulk SQL statements (the columns the API's own submit
sets), recordings as hard links to one file, jobs enqueued through
`app.analysis.queue.enqueue_analysis` as the API does.

A batch of jobs is enqueued deferred far into the future and then released at once (their
scores in arq's queue set to now, one ZADD XX): every job becomes due at the same instant,
whatever enqueueing them cost, so a run is timed from that instant on a worker that is
already polling.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

FAR_FUTURE = timedelta(days=1)
ENQUEUE_CONCURRENCY = 32


@dataclass(frozen=True)
class User:
    user_id: uuid.UUID
    session_id: uuid.UUID
    token: str


@dataclass(frozen=True)
class Task:
    task_id: uuid.UUID
    record_id: uuid.UUID
    attempt: int

    @property
    def job_id(self) -> str:
        return f"{self.task_id}:{self.attempt}"


def write_recording(path: Path, size: int) -> Path:
    """A WAV file of `size` bytes (16 kHz mono 16-bit silence; sparse on disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = max(size - 44, 0)
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    header += b"data" + struct.pack("<I", data)
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(44 + data)
    return path


async def create_users(pg_url: str, settings: Any, count: int) -> list[User]:
    """`count` users, one practice session each, and a bearer token for each."""
    from app.auth import issue_access_token
    from app.users.models import Role

    run = uuid.uuid4().hex[:8]
    connection = await asyncpg.connect(pg_url)
    try:
        rows = await connection.fetch(
            """
            WITH u AS (
                INSERT INTO users (email)
                SELECT 'bench-' || $2 || '-' || g || '@example.test' FROM generate_series(1, $1) g
                RETURNING user_id
            )
            INSERT INTO practice_sessions (user_id, title)
            SELECT user_id, 'bench' FROM u RETURNING user_id, practice_session_id
            """,
            count,
            run,
        )
    finally:
        await connection.close()
    return [
        User(
            row["user_id"],
            row["practice_session_id"],
            issue_access_token(settings, row["user_id"], Role.USER, ttl_seconds=6 * 3600),
        )
        for row in rows
    ]


async def create_records(
    pg_url: str,
    users: Sequence[User],
    per_user: int,
    *,
    storage_dir: Path | None = None,
    source: Path | None = None,
    size: int = 64_000,
) -> list[list[uuid.UUID]]:
    """`per_user` records in each user's session; with `storage_dir` and `source`, each
    record's recording exists (a hard link to `source`). The record ids, by user."""
    ids = [[uuid.uuid4() for _ in range(per_user)] for _ in users]
    flat_ids = [record_id for per in ids for record_id in per]
    sessions = [user.session_id for user, per in zip(users, ids, strict=True) for _ in per]
    keys = [f"bench/{record_id}.wav" for record_id in flat_ids]
    if storage_dir is not None and source is not None:
        await asyncio.to_thread(_link_all, source, storage_dir, keys)
    connection = await asyncpg.connect(pg_url)
    try:
        await connection.execute(
            """
            INSERT INTO practice_records (practice_record_id, practice_session_id,
                audio_storage_key, audio_content_type, audio_size_bytes, audio_duration_seconds)
            SELECT r, s, k, 'audio/wav', $4, 30.0
            FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS t(r, s, k)
            """,
            flat_ids,
            sessions,
            keys,
            size,
        )
    finally:
        await connection.close()
    return ids


def _link_all(source: Path, storage_dir: Path, keys: Sequence[str]) -> None:
    for key in keys:
        target = storage_dir / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)


async def create_tasks(pg_url: str, record_ids: Sequence[uuid.UUID]) -> list[Task]:
    """A pending task for each record (what a submit inserts), records marked ai_queued."""
    connection = await asyncpg.connect(pg_url)
    try:
        rows = await connection.fetch(
            """
            WITH created AS (
                INSERT INTO ai_analysis_tasks (practice_record_id, user_id, task_params,
                    total_steps, current_step, enqueued_at)
                SELECT r.practice_record_id, s.user_id, '{}'::jsonb, 5, 'queued', now()
                FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)
                JOIN practice_records r ON r.practice_record_id = t.id
                JOIN practice_sessions s ON s.practice_session_id = r.practice_session_id
                ORDER BY t.n
                RETURNING task_id, practice_record_id, attempt
            ), marked AS (
                UPDATE practice_records r SET record_status = 'ai_queued', ai_task_id = c.task_id
                FROM created c WHERE r.practice_record_id = c.practice_record_id
            )
            SELECT * FROM created
            """,
            list(record_ids),
        )
    finally:
        await connection.close()
    return [Task(row["task_id"], row["practice_record_id"], row["attempt"]) for row in rows]


async def enqueue(arq: Any, tasks: Sequence[Task], *, deferred: bool) -> None:
    """Each task's job through the service's own enqueue; `deferred`: due only when released."""
    from app.analysis.queue import enqueue_analysis

    defer_until = datetime.now(UTC) + FAR_FUTURE if deferred else None
    gate = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

    async def one(task: Task) -> None:
        async with gate:
            if not await enqueue_analysis(arq, task.task_id, task.attempt, defer_until):
                raise RuntimeError(f"job {task.job_id} was not enqueued")

    await asyncio.gather(*(one(task) for task in tasks))


async def release(redis: Any, queue_name: str, job_ids: Sequence[str]) -> float:
    """Make deferred jobs due now, all in one command; the wall-clock time of the release."""
    now = time.time()
    changed = await redis.zadd(
        queue_name, dict.fromkeys(job_ids, int(now * 1000)), xx=True, ch=True
    )
    if changed != len(job_ids):
        raise RuntimeError(f"released {changed} of {len(job_ids)} jobs from {queue_name}")
    return now


async def task_counts(pg_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(pg_url)
    try:
        rows = await connection.fetch(
            "SELECT status, count(*) AS n FROM ai_analysis_tasks GROUP BY status"
        )
    finally:
        await connection.close()
    return {row["status"]: int(row["n"]) for row in rows}
