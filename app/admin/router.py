from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from app.admin import audit, service, tasks
from app.admin.audit import AuditDep
from app.analysis import service as analysis_service
from app.analysis.schemas import LaneChange, SubmittedTask, TaskStatusOut
from app.deps import AdminDep, SessionDep, StateDep
from app.errors import error_responses
from app.text import MAX_BIGINT, CleanText, TimeFilter

router = APIRouter(prefix="/admin", tags=["admin"], responses=error_responses(401, 403, 422))


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: uuid.UUID
    email: str
    role: str
    created_at: datetime


@router.get("/users", response_model=list[UserOut])
async def list_users(
    _: AdminDep,
    session: SessionDep,
    log: AuditDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[UserOut]:
    async with log.action(session, "users.list", f"users?limit={limit}&offset={offset}"):
        users = [
            UserOut.model_validate(u) for u in await service.list_users(session, limit, offset)
        ]
    return users


@router.get("/tasks/stats", response_model=tasks.TaskStats)
async def task_stats(
    _: AdminDep, session: SessionDep, state: StateDep, log: AuditDep
) -> tasks.TaskStats:
    async with log.action(session, "tasks.stats"):
        result = await tasks.stats(session, state)
    return result


@router.delete(
    "/tasks/{task_id}",
    status_code=202,
    response_model=TaskStatusOut,
    responses=error_responses(404, 409),
)
async def cancel_task(
    task_id: uuid.UUID, admin: AdminDep, session: SessionDep, state: StateDep, log: AuditDep
) -> TaskStatusOut:
    # The cancel's UPDATE and its audit event commit together; a cancel that changed nothing
    # (finished or unknown task) is recorded with its error code instead.
    async with log.action(
        session, "task.cancel", f"task:{task_id}", changed=audit.task_changed(task_id)
    ):
        return await analysis_service.cancel(
            session, state.arq, state.estimator, state.publisher, admin, task_id, as_admin=True
        )


@router.post(
    "/tasks/{task_id}/retry",
    status_code=202,
    response_model=SubmittedTask,
    responses=error_responses(404, 409),
)
async def retry_task(
    task_id: uuid.UUID, _: AdminDep, session: SessionDep, state: StateDep, log: AuditDep
) -> SubmittedTask:
    # The new task and the audit event commit together; a retry that created nothing (an
    # active analysis of the recording answered instead) is recorded after it.
    async with log.action(session, "task.retry", f"task:{task_id}", changed=audit.created_a_task):
        return await tasks.retry(session, state, task_id)


@router.put(
    "/tasks/{task_id}/lane",
    response_model=TaskStatusOut,
    responses=error_responses(400, 404, 409),  # 400: a body that is not JSON
)
async def set_task_lane(
    task_id: uuid.UUID,
    change: LaneChange,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    log: AuditDep,
) -> TaskStatusOut:
    """Move an active task to another priority lane; a waiting job takes its place there."""
    action = f"task.lane.{change.lane.value}"  # the audit event names the lane asked for
    async with log.action(session, action, f"task:{task_id}", changed=audit.task_changed(task_id)):
        return await tasks.set_lane(session, state, task_id, change.lane)


class CleanupOut(BaseModel):
    deleted_tasks: int
    retention_days: int


@router.post("/tasks/cleanup", response_model=CleanupOut)
async def cleanup_tasks(
    _: AdminDep, session: SessionDep, state: StateDep, log: AuditDep
) -> CleanupOut:
    days = state.settings.cleanup_retention_days
    async with log.action(session, "tasks.cleanup", f"retention_days={days}"):
        deleted = await tasks.cleanup(session, days)
    return CleanupOut(deleted_tasks=deleted, retention_days=days)


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    event_id: int
    occurred_at: datetime
    actor_id: uuid.UUID
    action: str
    target: str | None
    request_id: str
    outcome: str
    details: dict[str, Any]


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next_before_id: int | None


@router.get("/audit", response_model=AuditPage)
async def audit_log(
    _: AdminDep,
    session: SessionDep,
    log: AuditDep,
    actor_id: uuid.UUID | None = None,
    action: Annotated[CleanText | None, Query(max_length=64)] = None,
    target: Annotated[CleanText | None, Query(max_length=255)] = None,
    outcome: Annotated[CleanText | None, Query(max_length=64)] = None,
    since: TimeFilter | None = None,
    until: TimeFilter | None = None,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Newest first; `next_before_id` pages on (keyset). Reading the log is audited too."""
    filters = audit.Filters(actor_id, action, target, outcome, since, until)
    async with log.action(session, "audit.list"):
        events = await audit.list_events(session, filters, before_id, limit)
    page = [AuditEventOut.model_validate(e) for e in events]
    next_id = page[-1].event_id if len(page) == limit else None
    return AuditPage(events=page, next_before_id=next_id)
