"""The whole system as processes, for the process-level scenarios (tests/reliability/
test_scenario_*.py, REPORT.md): the API under uvicorn (`uvicorn app.main:create_app
--factory`), worker processes as deployed (worker_process.py: `python -m worker`), against
real PostgreSQL and Redis (the session's, or a scenario's own when it kills them) and an AI
service (the fake one in this process, tests/fake_ai.py, or any URL).

Every process is started here with an environment built from the test's settings only
(`System.env`), its output in a log file under the test's directory, and stopped by its PID
in `close()` (SIGKILL if it still runs). What a scenario asserts is read from PostgreSQL
(the source of truth) and from the fake AI service's call log:

- `results_per_task`: rows of ai_analysis_results by task;
- `ai_calls_per_task`: the attempts the AI service was called for, by task (each call carries
  X-Request-ID: `task_id:attempt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import queue
from app.embedded import free_port
from app.settings import Settings
from tests.audio import make_wav
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI
from tests.reliability.worker_process import ChildProcess, WorkerProcess, worker_env
from tests.servers import live_client

TERMINAL = ("success", "failure", "cancelled")
START_WITHIN = 60.0  # seconds a process may take to answer (a loaded 2-core machine)
SUBMIT_CONCURRENCY = 16  # submits in flight at once from the test

_RECORDS = text(
    """
    WITH s AS (
        INSERT INTO practice_sessions (user_id, title) VALUES (:user_id, 'scenario')
        RETURNING practice_session_id
    )
    INSERT INTO practice_records (practice_record_id, practice_session_id, audio_storage_key,
                                  audio_content_type, audio_size_bytes, audio_duration_seconds)
    SELECT r, s.practice_session_id, k, 'audio/wav', :size, 1.0
    FROM s, unnest(CAST(:ids AS uuid[]), CAST(:keys AS text[])) AS t(r, k)
    RETURNING practice_session_id
    """
)
_STATUS_COUNTS = text(
    "SELECT status, count(*) AS n FROM ai_analysis_tasks"
    " WHERE task_id = ANY(CAST(:ids AS uuid[])) GROUP BY status"
)


class System:
    """The service's processes for one scenario, all stopped by `close()`."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        directory: Path,
        fake_ai: FakeAI | None = None,
        **env: str,
    ) -> None:
        """`settings`: the servers (database, Redis, storage, JWT secret) every process gets;
        `engine`: the test's connection to that database; `fake_ai`: the AI service (else
        `settings.ai_service_url`); `env`: settings every process gets (upper-case names),
        on top of tests.analysis.conftest.FAST."""
        self.settings = settings
        self.engine = engine
        self.directory = directory
        self.fake_ai = fake_ai
        self.overrides = env
        self.children: list[ChildProcess] = []
        self.api: ChildProcess | None = None
        self.api_url = ""
        self.redis = Redis.from_url(settings.redis_url)
        self._http: httpx.AsyncClient | None = None
        self._started = 0

    # -- processes ---------------------------------------------------------------------------
    @property
    def ai_url(self) -> str:
        return self.fake_ai.url if self.fake_ai is not None else self.settings.ai_service_url

    def env(self, **overrides: str) -> dict[str, str]:
        """A process's environment: the servers, FAST durations, the AI service, the
        system's settings, then `overrides`."""
        jwt = {"JWT_SECRET": self.settings.jwt_secret} if self.settings.jwt_secret else {}
        ai = {"AI_SERVICE_URL": self.ai_url}
        # The scenarios submit hundreds of tasks as one user: the per-user submit limit
        # (60/minute by default, S6 tests it) would refuse them.
        unlimited = {"SUBMIT_RATE_LIMIT": "1000000/second"}
        return worker_env(self.settings) | ai | jwt | unlimited | self.overrides | overrides

    def _log_name(self, name: str) -> str:
        self._started += 1
        return f"{self._started:02d}-{name}"

    async def start_api(self, **env: str) -> ChildProcess:
        """`uvicorn app.main:create_app --factory` on a free port; returns once /healthz
        answers. It becomes `self.api` (the one `http` talks to)."""
        port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        name = self._log_name("api")
        child = await ChildProcess.spawn(argv, self.env(**env), self.directory, name)
        self.children.append(child)
        url = f"http://127.0.0.1:{port}"

        async def healthy() -> bool:
            assert child.returncode is None, f"the API exited:\n{child.output()}"
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=2.0) as probe:
                    return (await probe.get(f"{url}/healthz")).status_code == 200
            return False

        await poll(healthy, START_WITHIN, "the API answering /healthz", interval=0.1)
        self.api, self.api_url = child, url
        if self._http is not None:
            await self._http.aclose()
        self._http = live_client(url, connections=SUBMIT_CONCURRENCY * 2, timeout=30.0)
        return child

    async def start_worker(self, name: str, **env: str) -> WorkerProcess:
        """A worker process (WorkerProcess: `python -m worker`) named `name`; returns once
        its start-up is done (its heartbeat key, written at start-up, is in Redis)."""
        key = queue.WORKER_KEY_PREFIX + name
        await self.redis.delete(key)
        worker = await WorkerProcess.start(self.env(**env, WORKER_NAME=name), self.directory)
        self.children.append(worker)

        async def started() -> bool:
            assert worker.returncode is None, f"worker {name} exited:\n{worker.output()}"
            return bool(await self.redis.exists(key))

        await poll(started, START_WITHIN, f"worker {name} started")
        return worker

    async def start_workers(self, prefix: str, count: int, **env: str) -> list[WorkerProcess]:
        """`count` workers named `prefix-0`, `prefix-1`…, started at once (as a deployment
        starts its replicas); returns once every one has started."""
        names = [f"{prefix}-{n}" for n in range(count)]
        return list(await asyncio.gather(*(self.start_worker(name, **env) for name in names)))

    async def close(self) -> None:
        """Every process still running is SIGKILLed by its PID; clients closed."""
        for child in reversed(self.children):
            await child.kill()
        if self._http is not None:
            await self._http.aclose()
        await self.redis.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "start_api first"
        return self._http

    # -- data ----------------------------------------------------------------------------------
    async def create_records(self, user: ApiUser, count: int) -> tuple[str, list[str]]:
        """`count` recordings of `user`'s in a new practice session, inserted in one
        statement (uploads are not what the scenarios measure), each a hard link to one
        1-second WAV file in storage. (session id, record ids)."""
        source = self.directory / "recording.wav"
        if not source.exists():
            source.write_bytes(make_wav(1.0))
        ids = [uuid.uuid4() for _ in range(count)]
        keys = [f"scenario/{record_id}.wav" for record_id in ids]
        await asyncio.to_thread(_link_all, source, Path(self.settings.storage_dir), keys)
        async with self.engine.begin() as connection:
            sessions = (
                await connection.execute(
                    _RECORDS,
                    {
                        "user_id": user.user_id,
                        "size": source.stat().st_size,
                        "ids": ids,
                        "keys": keys,
                    },
                )
            ).scalars()
            session_id = next(iter(sessions))
        return str(session_id), [str(record_id) for record_id in ids]

    async def submit(self, user: ApiUser, record_ids: Sequence[str], **headers: str) -> list[str]:
        """Submit each record over HTTP (at most SUBMIT_CONCURRENCY at once); the task ids,
        in the records' order. Fails on any answer but 202."""
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def one(record_id: str) -> str:
            async with gate:
                response = await self.http.post(
                    "/api/v1/tasks/analysis/submit",
                    json={"practice_record_id": record_id},
                    headers=user.headers | headers,
                )
            assert response.status_code == 202, response.text
            return str(response.json()["task_id"])

        return list(await asyncio.gather(*(one(r) for r in record_ids)))

    async def status_counts(self, task_ids: Sequence[str]) -> Counter[str]:
        """How many of these tasks are in each status, from PostgreSQL."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(_STATUS_COUNTS, {"ids": list(task_ids)})
            return Counter({row.status: int(row.n) for row in rows})

    async def wait_terminal(
        self,
        task_ids: Sequence[str],
        within: float,
        *,
        watch: Iterable[ChildProcess] = (),
    ) -> float:
        """Until every task is in a terminal status (PostgreSQL polled every 0.2 s); the
        seconds it took. Fails at the deadline with the counts, or as soon as a process in
        `watch` exits."""
        started = time.monotonic()
        watched = list(watch)
        last: Counter[str] = Counter()

        async def terminal() -> bool:
            nonlocal last
            for child in watched:
                assert child.returncode is None, f"pid {child.pid} exited:\n{child.output()}"
            last = await self.status_counts(task_ids)
            return sum(last[status] for status in TERMINAL) == len(task_ids)

        try:
            await poll(terminal, within, f"{len(task_ids)} tasks terminal", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; statuses: {dict(last)}") from None
        return time.monotonic() - started

    async def rows(self, task_ids: Sequence[str]) -> dict[str, Any]:
        """The tasks' rows by task id."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT task_id, status, attempt, worker_name, crash_count, retry_count,"
                    " retry_counts, error_code, error_message FROM ai_analysis_tasks"
                    " WHERE task_id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": list(task_ids)},
            )
            return {str(row.task_id): row for row in rows}

    async def results_per_task(self) -> Counter[str]:
        """ai_analysis_results rows by task id."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(text("SELECT task_id FROM ai_analysis_results"))
            return Counter(str(row.task_id) for row in rows)

    def ai_calls_per_task(self) -> dict[str, list[int]]:
        """The attempts the fake AI service was called for, by task."""
        assert self.fake_ai is not None
        return ai_calls_per_task(self.fake_ai)


def ai_calls_per_task(fake_ai: FakeAI) -> dict[str, list[int]]:
    """The attempts `fake_ai` was called for, by task (X-Request-ID: task_id:attempt)."""
    calls: dict[str, list[int]] = {}
    for call in list(fake_ai.calls):
        task_id, attempt = call.headers["x-request-id"].rsplit(":", 1)
        calls.setdefault(task_id, []).append(int(attempt))
    return {task_id: sorted(attempts) for task_id, attempts in calls.items()}


def _link_all(source: Path, storage: Path, keys: Iterable[str]) -> None:
    for key in keys:
        target = storage / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)


async def poll(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.05
) -> float:
    """Await `condition` every `interval` until it holds; the seconds it took. Fails with
    `what` at the deadline."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def system_on(
    settings: Settings, engine: AsyncEngine, ai_url: str, directory: Path
) -> AsyncIterator[System]:
    """A System whose workers call the AI service at `ai_url` (a real analyzer, say), its
    processes stopped at the end."""
    running = System(settings.model_copy(update={"ai_service_url": ai_url}), engine, directory)
    try:
        yield running
    finally:
        await running.close()
