"""The audit log of admin actions (issue 16, item 5): an append-only `audit_events` table.

Every admin route records one event: who (actor), what (action), on what (target), when, the
request id and the outcome. An action that commits through the request's SQLAlchemy session
gets its event in the same transaction: the event's INSERT runs in that session's
`before_commit`, so the change and its audit row commit together or not at all. A read (user
listing, stats, the audit log itself) records its event in the transaction of the read. An
action that fails before committing anything records its event, with the error code as the
outcome, in a transaction of its own after the rollback. The table refuses UPDATE, DELETE and
TRUNCATE (a trigger, migration 0004); nothing, the retention cleanup included, deletes from it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import (
    BigInteger,
    DateTime,
    Identity,
    Index,
    String,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.analysis.submit import CREATED_A_TASK
from app.auth import Principal
from app.db import Base
from app.deps import AdminDep
from app.errors import AppError

OK = "ok"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_occurred_at", "occurred_at"),
        Index("ix_audit_events_actor_id", "actor_id"),
    )

    event_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    actor_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


# A row this transaction wrote (inserted or updated) has its xmin: how an action's commit
# tells whether it changed its target (a cancel of a finished task changes nothing).
CHANGED_TASK = text(
    "SELECT EXISTS (SELECT 1 FROM ai_analysis_tasks WHERE task_id = :task_id"
    " AND xmin::text = (pg_current_xact_id()::text::bigint % 4294967296)::text)"
)


@dataclass
class Audit:
    """The audit of one admin request."""

    actor: Principal
    request_id: str

    def _row(self, action: str, target: str | None, outcome: str) -> dict[str, Any]:
        return {
            "actor_id": self.actor.user_id,
            "action": action,
            "target": target,
            "request_id": self.request_id,
            "outcome": outcome,
        }

    @asynccontextmanager
    async def action(
        self,
        session: AsyncSession,
        action: str,
        target: str | None = None,
        *,
        changed: Callable[[Session], bool] | None = None,
    ) -> AsyncIterator[None]:
        """Record `action` on `target`: the event is inserted by the first commit of `session`
        inside the block for which `changed` (default: always) holds; with no such commit it
        is written when the block ends, in the transaction then open (a read's) or, after an
        error, in one of its own."""
        written = False  # the event is committed
        pending = False  # the event is in the transaction being committed

        def before_commit(sync_session: Session) -> None:
            nonlocal pending
            if written or pending or (changed is not None and not changed(sync_session)):
                return
            sync_session.execute(insert(AuditEvent).values(self._row(action, target, OK)))
            pending = True

        def after_commit(sync_session: Session) -> None:
            nonlocal written, pending
            written, pending = written or pending, False

        def after_rollback(sync_session: Session) -> None:  # a COMMIT that failed included
            nonlocal pending
            pending = False

        sync = session.sync_session
        hooks = {
            "before_commit": before_commit,
            "after_commit": after_commit,
            "after_rollback": after_rollback,
        }
        for name, hook in hooks.items():
            event.listen(sync, name, hook)
        try:
            yield
        except BaseException as error:
            for name, hook in hooks.items():
                event.remove(sync, name, hook)
            if not written:
                await session.rollback()
                outcome = error.code if isinstance(error, AppError) else "error"
                await session.execute(insert(AuditEvent).values(self._row(action, target, outcome)))
                await session.commit()
            raise
        for name, hook in hooks.items():
            event.remove(sync, name, hook)
        if not written:
            await session.execute(insert(AuditEvent).values(self._row(action, target, OK)))
            await session.commit()


def task_changed(task_id: uuid.UUID) -> Callable[[Session], bool]:
    def changed(sync_session: Session) -> bool:
        return bool(sync_session.execute(CHANGED_TASK, {"task_id": task_id}).scalar())

    return changed


def created_a_task(sync_session: Session) -> bool:
    """Whether this transaction created a task (app.analysis.submit.resubmit_in says so)."""
    return bool(sync_session.info.get(CREATED_A_TASK))


async def get_audit(request: Request, admin: AdminDep) -> Audit:
    given = request.headers.get("x-request-id", "")
    request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
    return Audit(admin, request_id)


AuditDep = Annotated[Audit, Depends(get_audit)]


@dataclass(frozen=True)
class Filters:
    actor_id: uuid.UUID | None
    action: str | None
    target: str | None
    outcome: str | None
    since: datetime | None
    until: datetime | None


async def list_events(
    session: AsyncSession, filters: Filters, before_id: int | None, limit: int
) -> Sequence[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.event_id.desc()).limit(limit)
    if filters.actor_id is not None:
        query = query.where(AuditEvent.actor_id == filters.actor_id)
    if filters.action is not None:
        query = query.where(AuditEvent.action == filters.action)
    if filters.target is not None:
        query = query.where(AuditEvent.target == filters.target)
    if filters.outcome is not None:
        query = query.where(AuditEvent.outcome == filters.outcome)
    if filters.since is not None:
        query = query.where(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.occurred_at < filters.until)
    if before_id is not None:
        query = query.where(AuditEvent.event_id < before_id)
    return (await session.scalars(query)).all()
