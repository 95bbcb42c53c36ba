from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from app.admin import service, tasks
from app.analysis import service as analysis_service
from app.analysis.schemas import SubmittedTask, TaskStatusOut
from app.deps import AdminDep, SessionDep, StateDep

router = APIRouter(prefix="/admin", tags=["admin"])


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
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in await service.list_users(session, limit, offset)]


@router.get("/tasks/stats", response_model=tasks.TaskStats)
async def task_stats(_: AdminDep, session: SessionDep, state: StateDep) -> tasks.TaskStats:
    return await tasks.stats(session, state)


@router.delete("/tasks/{task_id}", status_code=202, response_model=TaskStatusOut)
async def cancel_task(
    task_id: uuid.UUID, admin: AdminDep, session: SessionDep, state: StateDep
) -> TaskStatusOut:
    return await analysis_service.cancel(
        session, state.arq, state.estimator, state.publisher, admin, task_id
    )


@router.post("/tasks/{task_id}/retry", status_code=202, response_model=SubmittedTask)
async def retry_task(
    task_id: uuid.UUID, _: AdminDep, session: SessionDep, state: StateDep
) -> SubmittedTask:
    return await tasks.retry(session, state, task_id)


class CleanupOut(BaseModel):
    deleted_tasks: int
    retention_days: int


@router.post("/tasks/cleanup", response_model=CleanupOut)
async def cleanup_tasks(_: AdminDep, session: SessionDep, state: StateDep) -> CleanupOut:
    days = state.settings.cleanup_retention_days
    return CleanupOut(deleted_tasks=await tasks.cleanup(session, days), retention_days=days)
