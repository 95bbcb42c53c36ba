from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.analysis.conftest import fake_ai, fake_ai_server, start_worker, worker_settings
from tests.fake_ai import FakeAI
from tests.reliability.system import System

__all__ = ["fake_ai", "fake_ai_server", "start_worker", "system", "worker_settings"]


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
