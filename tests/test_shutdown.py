"""The API gives back what it took: its Redis connections are closed when it stops."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from app.main import create_app
from app.settings import Settings
from tests.analysis.conftest import new_task, task_status
from tests.conftest import ApiUser


async def _clients(redis: Redis) -> int:
    return len(await redis.client_list())


async def test_the_api_closes_its_redis_connections_when_it_stops(
    settings: Settings, redis: Redis, alice: ApiUser
) -> None:
    before = await _clients(redis)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            task_id = await new_task(client, alice)  # enqueue and publish: pool connections
            await task_status(client, alice, task_id)
        assert await _clients(redis) > before
    assert await _clients(redis) == before
