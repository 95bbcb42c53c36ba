"""Housekeeping shared by the daily cron job and the admin API."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Failed and cancelled tasks past retention go; successful results are the user's history.
CLEANUP = text(
    """
    DELETE FROM ai_analysis_tasks
    WHERE status IN ('failure', 'cancelled')
      AND completed_at < now() - make_interval(days => :days)
    """
)


async def delete_expired_tasks(connection: AsyncConnection, retention_days: int) -> int:
    result = await connection.execute(CLEANUP, {"days": retention_days})
    return int(result.rowcount or 0)
