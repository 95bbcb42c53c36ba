"""The orchestrator's side of the Celery baseline: its worker process, and its batches.

A batch is published with the seed's own call (`analyze_audio_task.apply_async(args=[record
id, params], task_id=<task id>, queue="ai_analysis")`) through a connection to a staging Redis
database, where it waits as the queue's own list; the release MOVEs that list to the broker's
database at once (`MOVE`, which wakes the worker's BRPOP as a push would): every message is
waiting at the same instant, the same start as our released batches, and each message is the
one the seed's API would have published (exchange "", routing key `ai_analysis`), so a task's
retry (`self.retry`, published to the routing key it came by) goes back to the worker's queue as
in the seed's deployment. (Until 2026-11-30 the batch was staged in another list of the
broker's database and RENAMEd: its messages carried that list's name as their routing key and
every retry went back to the staging list, where no worker read it; the batch then never ended.)
The publishing side has no result backend (the seed's API would subscribe to each result; that
is the API's cost, not the worker's).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bench.fixtures import Task
from bench.harness import Child, child_env, wait_for
from bench.procstat import cpu_seconds, rss_bytes
from bench.stack import (
    CELERY_BACKEND_DB,
    CELERY_BROKER_DB,
    CELERY_STAGING_DB,
    SERVER_START_SECONDS,
    Stack,
)

QUEUE = "ai_analysis"
# kombu's Redis transport's ack emulation: delivered, not yet acknowledged messages.
UNACKED = ("unacked", "unacked_index")
READY = "ready."


@dataclass
class CeleryWorker:
    stack: Stack
    child: Child
    broker: Redis
    staging: Redis  # the staging database: a batch's list before its release

    @classmethod
    async def start(cls, stack: Stack) -> CeleryWorker:
        env = child_env(
            {
                "CELERY_BROKER_URL": stack.redis_url(CELERY_BROKER_DB),
                "CELERY_RESULT_BACKEND": stack.redis_url(CELERY_BACKEND_DB),
                "BENCH_DATABASE_URL": stack.celery_pg_url,
                "AI_SERVICE_URL": stack.ai.url,
                "STORAGE_DIR": str(stack.storage_dir),
            }
        )
        # A fresh broker: kombu's Redis transport restores the unacked messages of an earlier
        # worker (stopped with a batch unfinished) into the queue they were published to when
        # the next worker starts.
        for db in (CELERY_BROKER_DB, CELERY_STAGING_DB):
            redis = Redis.from_url(stack.redis_url(db))
            try:
                await redis.flushdb()
            finally:
                await redis.aclose()
        argv = [sys.executable, "-m", "celery", "-A", "bench.celery_baseline.tasks", "worker"]
        argv += ["--loglevel=info", f"--queues={QUEUE}", "--concurrency=4", "--pool=prefork"]
        argv += ["--hostname=bench@%h"]
        child = stack.processes.start("celery", argv, env)

        async def ready() -> bool:
            return READY in child.output(tail=100_000)

        await wait_for(ready, SERVER_START_SECONDS, "celery worker ready", 0.1, alive=child)
        broker = Redis.from_url(stack.redis_url(CELERY_BROKER_DB))
        staging = Redis.from_url(stack.redis_url(CELERY_STAGING_DB))
        return cls(stack, child, broker, staging)

    async def drop_stale(self) -> int:
        """Empty the staging list, the worker's queue and kombu's unacknowledged messages before
        a batch; how many messages were there. Between batches there should be none (a batch
        ends when every task has finished): any is a fault of an earlier batch (one that
        timed out, or a retry still waiting for its countdown), reported in the batch's
        notes; left in place, it would be counted into the next batch."""
        staged = await self.staging.llen(QUEUE)  # type: ignore[misc]
        pipe = self.broker.pipeline(transaction=True)
        pipe.llen(QUEUE)
        pipe.hlen(UNACKED[0])
        pipe.delete(QUEUE, *UNACKED)
        queued, unacked, _ = await pipe.execute()
        await self.staging.delete(QUEUE)
        return int(staged) + int(queued) + int(unacked)

    async def publish(self, tasks: Sequence[Task]) -> int:
        """Each task's message into the staging database's `ai_analysis` list (not yet seen by
        the worker), after `drop_stale`; how many stale messages it dropped."""
        stale = await self.drop_stale()
        await asyncio.to_thread(self._publish, list(tasks))
        waiting = await self.staging.llen(QUEUE)  # type: ignore[misc]
        if waiting != len(tasks):
            raise RuntimeError(f"{waiting} of {len(tasks)} Celery messages staged")
        return stale

    def _publish(self, tasks: list[Task]) -> None:
        from bench.celery_baseline.tasks import analyze_audio_task, app

        app.conf.update(broker_url=self.stack.redis_url(CELERY_STAGING_DB), result_backend=None)
        for task in tasks:
            analyze_audio_task.apply_async(
                args=[str(task.record_id), {}], task_id=str(task.task_id), queue=QUEUE
            )

    async def release(self) -> float:
        """Move the staged list into the broker's database (the worker's queue); when (epoch
        seconds)."""
        now = time.time()
        if not await self.staging.move(QUEUE, CELERY_BROKER_DB):
            raise RuntimeError(f"the staged Celery batch was not moved to the broker's {QUEUE}")
        return now

    def cpu_seconds(self) -> float:
        """The main process, its pool processes and the pool processes it has replaced."""
        return cpu_seconds(self.child.pid, tree=True)

    def rss(self) -> int:
        return rss_bytes(self.child.pid, tree=True)

    async def close(self) -> Any:
        await self.broker.aclose()
        await self.staging.aclose()
