from __future__ import annotations

from redis.asyncio import Redis

from app.settings import Settings


def create_redis(settings: Settings) -> Redis:
    redis: Redis = Redis.from_url(
        settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=15
    )
    return redis
