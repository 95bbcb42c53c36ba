"""What a worker process holds for its lifetime, stored in arq's ctx under "deps"."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.lifecycle import Reported
from app.analysis.progress import Publisher
from app.analysis.status import Row
from app.group_commit import GroupCommit
from app.settings import Settings
from app.storage import Storage
from worker.lease import Leases
from worker.providers import Providers
from worker.retry import RetryPolicy

# A worker's progress writes, grouped (worker/relay.py `progress_writes`).
ProgressWrites = GroupCommit[Reported, Row | None]


@dataclass
class WorkerDeps:
    settings: Settings
    engine: AsyncEngine  # the reconciler's, the estimator's
    pg: asyncpg.Pool  # asyncpg's own pool: the task transitions (app.analysis.lifecycle)
    arq: ArqRedis
    storage: Storage
    providers: Providers  # the AI providers: clients, breakers, slots
    policy: RetryPolicy
    publisher: Publisher
    worker_name: str
    leases: Leases
    progress: ProgressWrites


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def deps_of(ctx: dict[str, Any]) -> WorkerDeps:
    deps: WorkerDeps = ctx["deps"]
    return deps
