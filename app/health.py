"""Readiness: whether this API process can serve requests now (`GET /readyz`), as opposed to
liveness (`GET /healthz`: the process answers). A load balancer or Kubernetes takes a replica
out of service while its PostgreSQL does not answer, and back when it does. Redis is reported
but does not decide: without it the API still takes submits (the row is the outbox) and
answers status reads, so a Redis blip must not take every replica out of service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from redis.asyncio import Redis

from app.errors import AppError

# How long each dependency has to answer its check (seconds).
READY_TIMEOUT_SECONDS = 2.0


async def readiness(pg: asyncpg.Pool, redis: Redis) -> dict[str, str]:
    """{"database": …, "redis": …}: "ok", or the name of the error each check met (one
    `SELECT 1` on the pg pool, one PING), each within READY_TIMEOUT_SECONDS. Raises
    AppError(503, "not_ready") with the checks in its details when the database's is not
    "ok"."""
    checks: dict[str, Callable[[], Awaitable[object]]] = {
        "database": lambda: pg.fetchval("SELECT 1"),
        "redis": redis.ping,
    }
    answers = dict(
        zip(
            checks, await asyncio.gather(*(_check(probe) for probe in checks.values())), strict=True
        )
    )
    if answers["database"] != "ok":
        raise AppError(
            503, "not_ready", "The database does not answer", details={"checks": answers}
        )
    return answers


async def _check(probe: Callable[[], Awaitable[object]]) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await probe()
    except Exception as exc:  # a timeout included: the dependency is not ready
        return type(exc).__name__
    return "ok"
