"""What every scenario runs against: PostgreSQL and Redis from the wheels (app/embedded.py,
under the run's temp dir, migrated), the fake AI service as its own process, and the service's
own processes started as deployments start them (`uvicorn app.main:create_app --factory`,
`python -m worker`), configured through environment variables only.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arq.constants import health_check_key_suffix
from redis.asyncio import Redis

from bench.fake_ai import FakeAIControl
from bench.harness import Child, Processes, child_env, uvicorn_argv, wait_for, wait_http

ARQ = Path(sys.executable).parent / "arq"
# Redis databases: the service's queue and streams live in 0 (as deployed); the Celery
# baseline's broker and result backend in their own (its queue list would collide with arq's
# sorted set of the same name, `ai_analysis`).
SERVICE_DB, CELERY_BROKER_DB, CELERY_BACKEND_DB = 0, 2, 3
# The Celery baseline publishes a batch here, as its queue's list, then MOVEs it to its broker's
# database at the release (bench/celery_baseline/control.py).
CELERY_STAGING_DB = 4
# PostgreSQL databases (one server, the same schema): ours, and the Celery baseline's own. Our
# worker's reconciler adopts every pending row older than its grace in the database it serves
# (5 s then; an hour now, `service_env`); on a shared database it took the Celery batch's rows
# still waiting for Celery and ran them itself (2026-11-30), so each system under test gets its
# own, as each deployment would.
SERVICE_DATABASE, CELERY_DATABASE = "vocalborn_bench", "vocalborn_bench_celery"
SERVER_START_SECONDS = 60.0
TABLES = "ai_analysis_results, ai_analysis_tasks, practice_records, practice_sessions, users"


@dataclass
class Stack:
    workdir: Path
    processes: Processes
    extra_env: dict[str, str]
    postgres: Any = None  # app.embedded.EmbeddedPostgres
    redis_server: Any = None  # app.embedded.EmbeddedRedis
    pg_url: str = ""  # libpq URI (asyncpg, psycopg)
    celery_pg_url: str = ""  # the Celery baseline's database (same schema), libpq URI
    database_url: str = ""  # SQLAlchemy's asyncpg URL, as the service reads it
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    fake_ai: FakeAIControl | None = None
    fake_ai_child: Child | None = None
    redis: Redis | None = None

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    @property
    def redis_port(self) -> int:
        return int(self.redis_server.port)

    def redis_url(self, db: int = SERVICE_DB) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    @property
    def ai(self) -> FakeAIControl:
        assert self.fake_ai is not None
        return self.fake_ai

    @property
    def queue_redis(self) -> Redis:
        assert self.redis is not None
        return self.redis

    async def start(self) -> Stack:
        from app import migrate
        from app.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_database, free_port
        from app.settings import asyncpg_url

        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.postgres = EmbeddedPostgres(self.workdir / "postgres")
        self.redis_server = EmbeddedRedis(self.workdir / "redis")
        await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(self.redis_server.start)
        self.pg_url = await ensure_database(self.postgres.url, SERVICE_DATABASE)
        self.database_url = asyncpg_url(self.pg_url)
        await asyncio.to_thread(migrate.upgrade, self.database_url)
        self.celery_pg_url = await ensure_database(self.postgres.url, CELERY_DATABASE)
        await asyncio.to_thread(migrate.upgrade, asyncpg_url(self.celery_pg_url))
        self.redis = Redis.from_url(self.redis_url())
        port = free_port()
        argv = [sys.executable, "-m", "bench.fake_ai", "--port", str(port)]
        self.fake_ai_child = self.processes.start("fake-ai", argv, child_env({}))
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz", self.fake_ai_child)
        self.fake_ai = FakeAIControl(url)
        return self

    async def close(self) -> None:
        """Stops the servers; the processes are the caller's (`Processes.stop_all`)."""
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self.redis_server is not None:
            await asyncio.to_thread(self.redis_server.stop)
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)

    # -- the service's configuration -------------------------------------------------------
    def settings(self) -> Any:
        """Settings for this process (tokens, the queue), as the service's processes get them."""
        from app.settings import Settings

        return Settings(
            _env_file=None,
            environment="test",
            database_url=self.database_url,
            redis_url=self.redis_url(),
            storage_dir=self.storage_dir,
            jwt_secret=self.jwt_secret,
            ai_service_url=self.ai.url,
        )

    def service_env(self, **overrides: str) -> dict[str, str]:
        """Environment variables of an API or worker process: settings at their defaults but
        for the servers, then the run's --env, then `overrides`."""
        return child_env(
            {
                "ENVIRONMENT": "test",
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url(),
                "STORAGE_DIR": str(self.storage_dir),
                "JWT_SECRET": self.jwt_secret,
                "AI_SERVICE_URL": self.ai.url,
                # Each load-generating client submits far more than a person would: the
                # limiter still runs (its Redis round trip is measured), it never refuses.
                "SUBMIT_RATE_LIMIT": "1000000/second",
                # The scenarios seed pending rows and enqueue their jobs themselves (deferred,
                # then released at once). A worker's reconciler adopts pending rows older than
                # this grace (5 s by default): a worker that took longer than that to start on
                # a loaded machine enqueued a seeded batch first, and the scenario's own
                # enqueue was refused (the memory scenario crashed so in a CI run).
                "RECONCILE_PENDING_GRACE_SECONDS": "3600",
            }
            | self.extra_env
            | overrides
        )

    # -- the service's processes -----------------------------------------------------------
    async def start_api(self) -> tuple[Child, int]:
        from app.embedded import free_port

        port = free_port()
        argv = uvicorn_argv("app.main:create_app", port, factory=True)
        child = self.processes.start("api", argv, self.service_env())
        await wait_http(f"http://127.0.0.1:{port}/healthz", child, SERVER_START_SECONDS)
        return child, port

    async def start_worker(self, name: str, **settings: str) -> Child:
        """`python -m worker` (the deployed worker: worker/healing.py, with the lanes' due-job
        promotion) with these settings (WORKER_MAX_JOBS=...), started in the run's directory
        (no stray .env); returns once it polls the queue (arq writes its health-check key
        after on_startup, at its first poll)."""
        from app.analysis.queue import QUEUE_NAME

        env = self.service_env(WORKER_NAME=name, **settings)
        return await self.start_polling(
            name, [sys.executable, "-m", "worker"], env, QUEUE_NAME + health_check_key_suffix
        )

    async def start_arq_worker(
        self, name: str, settings_path: str, env: dict[str, str], health_key: str
    ) -> Child:
        """arq's own command on `settings_path` (the baselines' workers)."""
        return await self.start_polling(name, [str(ARQ), settings_path], env, health_key)

    async def start_polling(
        self, name: str, argv: list[str], env: dict[str, str], health_key: str
    ) -> Child:
        """`argv` started as `name`; returns once it has written `health_key` (its first
        poll)."""
        redis = self.queue_redis
        await redis.delete(health_key)
        child = self.processes.start(name, argv, env)

        async def polling() -> bool:
            return bool(await redis.exists(health_key))

        await wait_for(polling, SERVER_START_SECONDS, f"{name} polling", alive=child)
        return child

    # -- between rounds ----------------------------------------------------------------------
    async def clean(self) -> None:
        """Empty tables (ours and the Celery baseline's), the service's Redis database and the
        recordings."""
        import shutil

        import asyncpg

        for url in (self.pg_url, self.celery_pg_url):
            connection = await asyncpg.connect(url)
            try:
                await connection.execute(f"TRUNCATE {TABLES} CASCADE")
            finally:
                await connection.close()
        await self.queue_redis.flushdb()
        recordings = self.storage_dir / "bench"
        await asyncio.to_thread(shutil.rmtree, recordings, True)
