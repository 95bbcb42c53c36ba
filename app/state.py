"""What the API process holds for its lifetime (created in the lifespan, never at import)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.analysis.eta import Estimator
from app.analysis.hub import Hub
from app.analysis.live import LiveSource
from app.analysis.progress import Publisher
from app.analysis.stream_auth import StreamLimiter
from app.analysis.submit import Submitter
from app.ratelimit import SubmitRateLimit
from app.settings import Settings
from app.storage import Storage


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    pg: asyncpg.Pool  # asyncpg's own pool, for the hottest statements (status, submit)
    sessions: async_sessionmaker[AsyncSession]
    arq: ArqRedis  # the queue's client, also used for any other Redis access
    estimator: Estimator
    publisher: Publisher
    submitter: Submitter
    hub: Hub
    live: LiveSource
    limiter: StreamLimiter
    submit_limit: SubmitRateLimit
    storage: Storage
