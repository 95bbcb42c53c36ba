from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.audio import make_wav
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI
from worker.main import healing_worker

# Durations shrunk so that every lifecycle test runs in seconds.
FAST = {
    "lease_seconds": 3.0,
    "job_timeout_seconds": 20.0,
    "ai_deadline_seconds": 4.0,
    "ai_connect_timeout_seconds": 1.0,
    "reconcile_interval_seconds": 1,
    "reconcile_pending_grace_seconds": 0.5,
    "retry_base_network_seconds": 0.2,
    "retry_base_timeout_seconds": 0.2,
    "retry_base_ai_service_seconds": 0.2,
    "retry_base_resource_seconds": 0.2,
    "retry_max_delay_seconds": 2.0,
    "breaker_failure_threshold": 50,
    "breaker_cooldown_seconds": 1.0,
    "worker_poll_delay_seconds": 0.05,
}

TERMINAL = {"success", "failure", "cancelled"}


@pytest.fixture(scope="session")
def fake_ai_server() -> Iterator[FakeAI]:
    server = FakeAI().start()
    yield server
    server.stop()


@pytest.fixture
def fake_ai(fake_ai_server: FakeAI) -> Iterator[FakeAI]:
    fake_ai_server.reset()
    yield fake_ai_server
    if not fake_ai_server.running:  # a test stopped it
        fake_ai_server.start()
    fake_ai_server.reset()


@pytest.fixture
def worker_settings(settings: Settings, fake_ai_server: FakeAI) -> Settings:
    return settings.model_copy(update=FAST | {"ai_service_url": fake_ai_server.url})


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(worker_settings: Settings, clean: None) -> AsyncIterator[StartWorker]:
    """Starts in-process workers (the same code as `python -m worker`)."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(ctx: dict[str, Any] | None = None, **overrides: Any) -> Worker:
        """A worker with these settings overridden; `ctx` adds to its context (test seams
        such as `ai_connector`)."""
        settings = worker_settings.model_copy(update=overrides)
        context = {"settings": settings} | (ctx or {})
        worker = healing_worker(settings, handle_signals=False, ctx=context)
        task = asyncio.create_task(worker.async_run())
        running.append((worker, task))
        return worker

    yield start
    for worker, task in running:
        await stop_worker(worker, task)


async def stop_worker(worker: Worker, running: asyncio.Task[None]) -> None:
    """Stop an in-process worker and the task that runs it."""
    # arq's close() gathers the job tasks it cancels; one cancelled while arq itself was
    # finishing it (after our code returned) surfaces here as CancelledError, and close()
    # stops there: the rest of it (our shutdown, which stops the heartbeat and the leases, and
    # arq's pool) is done here, or the session's event loop keeps a stopped worker beating
    # (a live heartbeat, seen by later tests' worker counts).
    try:
        await worker.close()
    except asyncio.CancelledError:
        if worker.on_shutdown is not None:
            await worker.on_shutdown(worker.ctx)
        await worker.pool.aclose(close_connection_pool=True)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def wait_for(
    condition: Callable[[], Awaitable[Any]], within: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll `condition` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


async def upload_recording(
    client: httpx.AsyncClient,
    user: ApiUser,
    seconds: float = 1.0,
    session_id: str | None = None,
    audio: bytes | None = None,
) -> tuple[str, str, bytes]:
    """A new recording of `user`'s (in a new session unless `session_id`): `audio`, or else a
    tone of `seconds` whose bytes no other upload has (`make_wav(unique=True)`), so that the result
    cache, which matches recordings by content, never takes two uploads for one recording.
    (session id, record id, the bytes uploaded)."""
    if session_id is None:
        response = await client.post("/api/v1/practice/sessions", json={}, headers=user.headers)
        session_id = str(response.json()["practice_session_id"])
    if audio is None:
        audio = make_wav(seconds, unique=True)
    response = await client.post(
        f"/api/v1/practice/sessions/{session_id}/records",
        files={"audio": ("r.wav", audio, "audio/wav")},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    return session_id, str(response.json()["practice_record_id"]), audio


async def submit(
    client: httpx.AsyncClient, user: ApiUser, record_id: str, **headers: str
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_record_id": record_id, "parameters": {"language": "zh-TW"}},
        headers=user.headers | headers,
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_task(client: httpx.AsyncClient, user: ApiUser) -> str:
    """A recording of `user`'s, submitted: its task id."""
    _, record_id, _ = await upload_recording(client, user)
    return str((await submit(client, user, record_id))["task_id"])


async def task_status(client: httpx.AsyncClient, user: ApiUser, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/tasks/analysis/{task_id}/status", headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for_status(
    client: httpx.AsyncClient,
    user: ApiUser,
    task_id: str,
    statuses: set[str] = TERMINAL,
    within: float = 30.0,
    samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        current = await task_status(client, user, task_id)
        if samples is not None:
            samples.append(current)
        return current if current["status"] in statuses else None

    result: dict[str, Any] = await wait_for(reached, within, interval=0.02)
    return result


async def record_status(engine: AsyncEngine, record_id: str) -> str:
    async with engine.connect() as connection:
        value = await connection.scalar(
            text("SELECT record_status FROM practice_records WHERE practice_record_id = :r"),
            {"r": record_id},
        )
    return str(value)
