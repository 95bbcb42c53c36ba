"""Queue position and time estimates, from the arq queue and recent processing times."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

DEFAULT_DURATION_SECONDS = 45.0
REFRESH_SECONDS = 30.0

_RECENT_DURATION = text(
    "SELECT avg(extract(epoch FROM completed_at - started_at)) FROM ("
    " SELECT completed_at, started_at FROM ai_analysis_tasks"
    " WHERE status = 'success' AND started_at IS NOT NULL"
    " ORDER BY completed_at DESC LIMIT 50) AS recent"
)


class Estimator:
    """Mean processing time of the last 50 successes, refreshed at most every 30 s."""

    def __init__(self, engine: AsyncEngine, slots: int) -> None:
        self._engine = engine
        self._slots = max(slots, 1)
        self._mean = DEFAULT_DURATION_SECONDS
        self._refreshed = -math.inf

    async def mean_duration(self) -> float:
        if time.monotonic() - self._refreshed > REFRESH_SECONDS:
            self._refreshed = time.monotonic()
            async with self._engine.connect() as connection:
                mean = await connection.scalar(_RECENT_DURATION)
            if mean is not None:
                self._mean = max(float(mean), 0.1)
        return self._mean

    async def completion_time(self, position: int | None) -> datetime | None:
        if position is None:
            return None
        mean = await self.mean_duration()
        rounds = math.ceil(position / self._slots)
        return datetime.now(UTC) + timedelta(seconds=mean * rounds)

    async def remaining(self, progress: int, started_at: datetime | None) -> timedelta | None:
        if started_at is None:
            return None
        elapsed = (datetime.now(UTC) - started_at).total_seconds()
        if progress >= 20:
            return timedelta(seconds=max(elapsed * (100 - progress) / progress, 0.0))
        return timedelta(seconds=max(await self.mean_duration() - elapsed, 1.0))


def iso_duration(value: timedelta | None) -> str | None:
    """ISO 8601 duration, whole seconds: PT45S, PT2M5S."""
    if value is None:
        return None
    seconds = max(round(value.total_seconds()), 0)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n]
    if seconds or not parts:
        parts.append(f"{seconds}S")
    return "PT" + "".join(parts)
