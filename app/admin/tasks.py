"""The seed's admin task API: stats, cancel any task, retry a finished one, cleanup."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app import liveness
from app.ai_client.providers import ProviderState, provider_states
from app.analysis import queue, status, submit
from app.analysis.lanes import Lane, LaneWeights
from app.analysis.maintenance import delete_expired_tasks
from app.analysis.schemas import AnalysisParameters, SubmittedTask, TaskStatusOut
from app.auth import Principal
from app.errors import AppError, NotFound
from app.state import AppState
from app.users.models import Role

log = logging.getLogger(__name__)

STATS = text(
    """
    SELECT
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM (
            SELECT status, count(*) AS n FROM ai_analysis_tasks GROUP BY status) AS counts
        ) AS by_status,
        (SELECT avg(extract(epoch FROM completed_at - started_at)) FROM ai_analysis_tasks
         WHERE status = 'success' AND completed_at > now() - interval '1 hour'
        ) AS mean_processing_seconds_last_hour,
        (SELECT count(*) FROM ai_analysis_tasks
         WHERE status = 'failure' AND completed_at > now() - interval '1 hour'
        ) AS failures_last_hour,
        (SELECT count(*) FROM ai_analysis_results
         WHERE reused_from_task_id IS NOT NULL AND created_at > now() - interval '1 hour'
        ) AS cache_hits_last_hour,
        (SELECT coalesce(jsonb_object_agg(lane, n), '{}') FROM (
            SELECT lane, count(*) AS n FROM ai_analysis_tasks
            WHERE status IN ('pending', 'retry') GROUP BY lane) AS lanes
        ) AS waiting_by_lane
    """
)
# An admin's lane change: only an active task has a lane to change; its status columns after.
SET_LANE = text(
    f"""
    UPDATE ai_analysis_tasks SET lane = :lane, updated_at = clock_timestamp()
    WHERE task_id = :task_id AND status IN ('pending', 'processing', 'retry')
    RETURNING {status.status_columns("ai_analysis_tasks")}
    """
)
TASK_STATE = text("SELECT status FROM ai_analysis_tasks WHERE task_id = :task_id")
FINISHED_TASK = text(
    "SELECT user_id, practice_record_id, status, task_params FROM ai_analysis_tasks"
    " WHERE task_id = :task_id"
)


class WorkerOut(BaseModel):
    """A live worker, from its heartbeat (app/liveness.py); times are Unix seconds."""

    worker: str
    host: str
    pid: int
    jobs_in_flight: int
    version: str
    started_at: float
    last_heartbeat_at: float


class TaskStats(BaseModel):
    by_status: dict[str, int]
    queue_depth: int | None
    live_workers: int | None  # workers with a live heartbeat (None: Redis unavailable)
    workers: list[WorkerOut] | None
    mean_processing_seconds_last_hour: float | None  # analyses only (cache hits never start)
    failures_last_hour: int
    cache_hits_last_hour: int  # tasks finished at once with a copy of an earlier result
    # Each AI provider in order of preference: its concurrency cap, slots in use, breaker
    # state (None: Redis unavailable).
    ai_providers: list[ProviderState] | None = None
    waiting_by_lane: dict[str, int]  # pending and retry tasks by priority lane


async def stats(session: AsyncSession, state: AppState) -> TaskStats:
    row = (await session.execute(STATS)).mappings().one()
    depth = workers = providers = None
    settings = state.settings
    try:
        depth = await queue.queued_count(state.arq)
        workers = [
            WorkerOut(**_fields(beat), last_heartbeat_at=beat.at)
            for beat in await liveness.live_workers(state.arq)
        ]
        providers = await provider_states(
            state.arq,
            settings.providers,
            settings.ai_max_concurrency,
            settings.breaker_failure_threshold,
        )
    except Exception:  # Redis down: the database half still answers
        pass
    mean = row["mean_processing_seconds_last_hour"]
    return TaskStats(
        by_status=row["by_status"],
        queue_depth=depth,
        live_workers=len(workers) if workers is not None else None,
        workers=workers,
        mean_processing_seconds_last_hour=float(mean) if mean is not None else None,
        failures_last_hour=row["failures_last_hour"],
        cache_hits_last_hour=row["cache_hits_last_hour"],
        ai_providers=providers,
        waiting_by_lane=row["waiting_by_lane"],
    )


async def retry(session: AsyncSession, state: AppState, task_id: uuid.UUID) -> SubmittedTask:
    """A new task for the same recording and parameters; the finished one stays as history."""
    row = (await session.execute(FINISHED_TASK, {"task_id": task_id})).mappings().first()
    await session.commit()
    if row is None:
        raise NotFound("Analysis task")
    if row["status"] not in ("failure", "cancelled"):
        raise AppError(
            409,
            "task_not_retryable",
            f"Only failed or cancelled tasks can be retried; this one is {row['status']}",
            details={"status": row["status"]},
        )
    owner = Principal(row["user_id"], Role.USER)
    parameters = AnalysisParameters.model_validate(_known(row["task_params"]))
    # If the recording already has an active analysis, that one is returned.
    return await submit.resubmit_in(
        session, state.submitter, owner, row["practice_record_id"], parameters
    )


async def set_lane(
    session: AsyncSession, state: AppState, task_id: uuid.UUID, lane: Lane
) -> TaskStatusOut:
    """Move an active task to `lane`: the row first (committed with the admin's audit event),
    then its job, if it waits in the queue, to its place in the new lane
    (`queue.move_to_flow`); a running task keeps its place and its next attempt waits in the
    new lane. NotFound for an unknown task; 409 task_finished for a finished one. A Redis
    failure leaves the waiting job at its old place (logged); the row's lane stands."""
    row = (await session.execute(SET_LANE, {"task_id": task_id, "lane": lane.value})).mappings()
    changed = row.first()
    if changed is None:
        current = (await session.execute(TASK_STATE, {"task_id": task_id})).scalar()
        await session.rollback()
        if current is None:
            raise NotFound("Analysis task")
        raise AppError(
            409,
            "task_finished",
            f"Only a waiting or running task has a lane; this one is {current}",
            details={"status": current},
        )
    await session.commit()
    if changed["status"] in ("pending", "retry"):
        job_id = queue.job_id_for(changed["task_id"], changed["attempt"])
        flow = LaneWeights.of(state.settings).flow(lane, changed["user_id"])
        try:
            await queue.move_to_flow(state.arq, job_id, flow)
        except Exception:
            log.warning("lane change of job %s not applied in the queue", job_id)
    document = await status.describe(changed, state.arq, state.estimator)
    await state.publisher.publish(document)
    return document


async def cleanup(session: AsyncSession, retention_days: int) -> int:
    connection = await session.connection()
    deleted = await delete_expired_tasks(connection, retention_days)
    await session.commit()
    return deleted


def _fields(beat: liveness.Heartbeat) -> dict[str, Any]:
    return {name: getattr(beat, name) for name in WorkerOut.model_fields if hasattr(beat, name)}


def _known(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k in AnalysisParameters.model_fields}
