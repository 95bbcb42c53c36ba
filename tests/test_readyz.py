"""GET /readyz: ready while PostgreSQL answers, 503 with the one error shape while it does not;
Redis down is reported but keeps the replica ready (the API still takes submits: the row is the
outbox); /healthz answers throughout."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedded import EmbeddedPostgres, EmbeddedRedis


async def test_redis_down_is_reported_and_the_replica_stays_ready(
    client: httpx.AsyncClient, redis_server: EmbeddedRedis | None
) -> None:
    assert redis_server is not None, "needs the embedded Redis (TEST_REDIS_URL is set)"
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}

    await asyncio.to_thread(redis_server.stop)
    try:
        degraded = await client.get("/readyz")
        assert degraded.status_code == 200
        assert degraded.json()["checks"]["redis"] != "ok"
    finally:
        await asyncio.to_thread(redis_server.start)


async def test_not_ready_while_the_database_is_down(
    client: httpx.AsyncClient,
    postgres_server: EmbeddedPostgres | None,
    engine: AsyncEngine,
    pg: asyncpg.Pool,
) -> None:
    assert postgres_server is not None, "needs the embedded PostgreSQL (TEST_DATABASE_URL set)"
    await asyncio.to_thread(postgres_server.stop)
    try:
        down = await client.get("/readyz")
        assert down.status_code == 503
        error = down.json()["error"]
        assert error["code"] == "not_ready"
        assert error["checks"]["database"] != "ok"
        assert (await client.get("/healthz")).status_code == 200
    finally:
        await asyncio.to_thread(postgres_server.start)
        await engine.dispose()  # the tests' own pooled connections died with the server
        await pg.expire_connections()
    assert (await client.get("/readyz")).status_code == 200
