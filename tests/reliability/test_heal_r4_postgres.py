"""R4: PostgreSQL crash-restart under load (an immediate shutdown, what `pg_ctl stop -m
immediate` sends, then a start with crash recovery): during the outage the API answers 503 in
the one error shape, never 500; afterwards no task is left in `processing`, every task
completes once, and the workers never exit.

Processes: the API under uvicorn and two workers (`python -m worker`) on the session's Redis
and a PostgreSQL of this test's own (EmbeddedPostgres), stopped by its postmaster's PID.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import migrate
from app.auth import issue_access_token
from app.db import database_unreachable
from app.embedded import EmbeddedPostgres, ensure_database, free_port
from app.settings import Settings, asyncpg_url
from app.users.models import Role
from tests.analysis.conftest import FAST
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok
from tests.reliability.report import record_figure
from tests.reliability.system import System, poll

BEFORE, AFTER, WORKERS = 100, 60, 2
PROBES = 30  # API requests answered during the outage, of each kind
ENV = {"WORKER_MAX_JOBS": "10"}
SCALE = f"lease {FAST['lease_seconds']:g} s (production 30 s); AI 0.3 s a task"


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL of this test's own, migrated: (server, SQLAlchemy URL)."""
    server = EmbeddedPostgres(tmp_path / "postgres").start()
    try:
        url = asyncpg_url(await ensure_database(server.url, "vocalborn_r4"))
        await asyncio.to_thread(migrate.upgrade, url)
        yield server, url
    finally:
        server.stop()


@pytest.fixture
def r4_settings(settings: Settings, own_postgres: tuple[EmbeddedPostgres, str]) -> Settings:
    return settings.model_copy(update={"database_url": own_postgres[1]})


@pytest.fixture
async def r4_engine(r4_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(r4_settings.database_url, pool_pre_ping=True)
    yield engine
    await engine.dispose()


@pytest.fixture
async def r4_system(
    r4_settings: Settings, r4_engine: AsyncEngine, fake_ai: FakeAI, clean: None, tmp_path: Path
) -> AsyncIterator[System]:
    running = System(r4_settings, r4_engine, tmp_path, fake_ai)
    try:
        yield running
    finally:
        await running.close()


async def _user(engine: AsyncEngine, settings: Settings) -> ApiUser:
    email = f"{uuid.uuid4().hex[:12]}@example.test"
    async with engine.begin() as connection:
        user_id = await connection.scalar(
            text("INSERT INTO users (email, role) VALUES (:e, 'user') RETURNING user_id"),
            {"e": email},
        )
    return ApiUser(user_id, email, issue_access_token(settings, user_id, Role.USER))


def _shape(response: httpx.Response) -> bool:
    """The one error shape: {"error": {"code": str, "message": str, ...}}."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


@pytest.mark.scenario("R4")
async def test_r4_postgres_crash_restart_under_load(
    r4_system: System,
    r4_settings: Settings,
    r4_engine: AsyncEngine,
    own_postgres: tuple[EmbeddedPostgres, str],
) -> None:
    system, (postgres, _) = r4_system, own_postgres
    fake_ai = system.fake_ai
    assert fake_ai is not None
    fake_ai.reset(default=ok(latency=0.3))
    user = await _user(r4_engine, r4_settings)
    await system.start_api()
    _, records = await system.create_records(user, BEFORE + AFTER + PROBES)
    before, after, probe_records = (
        records[:BEFORE], records[BEFORE : BEFORE + AFTER], records[BEFORE + AFTER :]
    )  # fmt: skip
    workers = [await system.start_worker(f"r4-{n}", **ENV) for n in range(WORKERS)]
    first = await system.submit(user, before)

    async def under_load() -> bool:
        counts = await system.status_counts(first)
        return counts["processing"] >= 10 and counts["success"] >= 10

    await poll(under_load, 60, "tasks running and finishing")

    crashed_at = time.monotonic()
    postgres.stop(signal.SIGQUIT)  # immediate shutdown: no checkpoint, crash recovery next

    answers: Counter[str] = Counter()
    bad: list[tuple[str, int, str]] = []
    http = system.http

    async def probe(name: str, request: Any) -> None:
        try:
            response = await request
        except httpx.TransportError as exc:  # no answer at all
            bad.append((name, 0, repr(exc)))
            return
        answers[f"{name} {response.status_code}"] += 1
        if response.status_code != 503 or not _shape(response):
            bad.append((name, response.status_code, response.text[:300]))

    for n in range(PROBES):
        headers = user.headers
        await asyncio.gather(
            probe("status", http.get(f"/api/v1/tasks/analysis/{first[n]}/status", headers=headers)),
            probe(
                "submit",
                http.post(
                    "/api/v1/tasks/analysis/submit",
                    json={"practice_record_id": probe_records[n]},
                    headers=headers,
                ),
            ),
            probe("result", http.get(f"/api/v1/tasks/analysis/{first[n]}/result", headers=headers)),
            probe("readyz", http.get("/readyz")),
        )
    for worker in workers:
        assert worker.returncode is None, worker.output()
    postgres.start()  # crash recovery, the same socket
    down_for = time.monotonic() - crashed_at
    assert bad == [], bad  # 503 in the error shape, never 500

    second = await system.submit(user, after)
    task_ids = first + second
    completed_in = await system.wait_terminal(task_ids, within=120, watch=workers)
    counts = await system.status_counts(task_ids)
    assert counts == {"success": BEFORE + AFTER}, counts  # none stuck in processing
    results = await system.results_per_task()
    assert {t: results[t] for t in task_ids if results[t] != 1} == {}
    calls = system.ai_calls_per_task()
    called_twice = sum(1 for t in task_ids if len(calls.get(t, [])) > 1)
    for worker in workers:
        assert worker.returncode is None, worker.output()
        worker.send(signal.SIGTERM)
    codes = [await worker.wait(within=30) for worker in workers]
    assert codes == [0] * WORKERS, [w.output() for w in workers]
    record_figure(
        "R4",
        f"PostgreSQL down {down_for:.1f} s under load: {sum(answers.values())} API answers"
        f" during the outage, all 503 in the error shape, 0 × 500; {BEFORE + AFTER}/"
        f"{BEFORE + AFTER} success {completed_in:.1f} s after the restart, none left in"
        f" processing, one result each ({called_twice} sent to the AI twice), 0 worker exits",
        scale=SCALE,
        down_seconds=round(down_for, 2),
        completed_seconds=round(completed_in, 2),
        answers_503=sum(answers.values()),
        ai_called_twice=called_twice,
    )


def test_an_os_error_outside_asyncpg_is_not_taken_for_the_database(tmp_path: Path) -> None:
    try:
        (tmp_path / "missing.wav").read_bytes()  # storage, say
    except OSError as exc:
        assert not database_unreachable(exc)  # a 500, not a 503 telling the client to retry


async def test_a_refused_or_missing_database_is_unreachable(tmp_path: Path) -> None:
    for dsn in (
        f"postgresql://postgres@127.0.0.1:{free_port()}/x",  # refused
        f"postgresql://postgres@/x?host={tmp_path}",  # no socket
    ):
        with pytest.raises(OSError) as raised:
            await asyncpg.connect(dsn, timeout=5)
        assert database_unreachable(raised.value), dsn
