import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedded import EmbeddedRedis
from app.settings import Settings
from tests.analysis.conftest import fake_ai, fake_ai_server, start_worker, worker_settings
from tests.fake_ai import FakeAI
from tests.reliability.system import System
from tests.sentinel_cluster import SentinelCluster

__all__ = ["fake_ai", "fake_ai_server", "start_worker", "system", "worker_settings"]

ACL_USER = "vocalborn-app"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of the test's own, to kill and restart (the session's is shared)."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def sentinel_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A real Sentinel deployment (one master, one replica, three Sentinels) with a Sentinel
    password and an ACL user on Redis, stopped by PID at teardown."""
    cluster = SentinelCluster(
        tmp_path / "sentinel",
        redis_password=secrets.token_urlsafe(16),
        sentinel_password=secrets.token_urlsafe(16),
        redis_username=ACL_USER,
    ).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def system(
    settings: Settings, engine: AsyncEngine, fake_ai: FakeAI, clean: None, tmp_path: Path
) -> AsyncIterator[System]:
    """The service as processes (tests/reliability/system.py) on the session's PostgreSQL
    and Redis, with the fake AI service; every process stopped by PID afterwards."""
    running = System(settings, engine, tmp_path, fake_ai)
    try:
        yield running
    finally:
        await running.close()
