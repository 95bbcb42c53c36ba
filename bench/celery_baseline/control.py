"""The orchestrator's side of the Celery baseline: its worker process, and its batches.

A batch is published with the seed's own call (`analyze_audio_task.apply_async(args=[record
id, params], task_id=<task id>, queue=...)`) into a staging list, then released at once by
renaming that list to the worker's queue (`RENAME`, which wakes the worker's BRPOP): every
message is waiting at the same instant, the same start as our released batches. The
publishing side has no result backend (the seed's API would subscribe to each result; that is
the API's cost, not the worker's).
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
from bench.stack import CELERY_BACKEND_DB, CELERY_BROKER_DB, SERVER_START_SECONDS, Stack

QUEUE = "ai_analysis"
STAGING = "bench_staging"
# kombu's Redis transport's ack emulation: delivered, not yet acknowledged messages.
UNACKED = ("unacked", "unacked_index")
READY = "ready."


@dataclass
class CeleryWorker:
    stack: Stack
    child: Child
    broker: Redis

    @classmethod
    async def start(cls, stack: Stack) -> CeleryWorker:
        env = child_env(
            {
                "CELERY_BROKER_URL": stack.redis_url(CELERY_BROKER_DB),
                "CELERY_RESULT_BACKEND": stack.redis_url(CELERY_BACKEND_DB),
                "BENCH_DATABASE_URL": stack.pg_url,
                "AI_SERVICE_URL": stack.ai.url,
                "STORAGE_DIR": str(stack.storage_dir),
            }
        )
        # A fresh broker: kombu's Redis transport restores the unacked messages of an earlier
        # worker (stopped with a batch unfinished) into the queue they were published to,
        # the staging list, when the next worker starts (43 of 20 messages staged, once).
        broker = Redis.from_url(stack.redis_url(CELERY_BROKER_DB))
        try:
            await broker.flushdb()
        finally:
            await broker.aclose()
        argv = [sys.executable, "-m", "celery", "-A", "bench.celery_baseline.tasks", "worker"]
        argv += ["--loglevel=info", f"--queues={QUEUE}", "--concurrency=4", "--pool=prefork"]
        argv += ["--hostname=bench@%h"]
        child = stack.processes.start("celery", argv, env)

        async def ready() -> bool:
            return READY in child.output(tail=100_000)

        await wait_for(ready, SERVER_START_SECONDS, "celery worker ready", 0.1, alive=child)
        worker = cls(stack, child, Redis.from_url(stack.redis_url(CELERY_BROKER_DB)))
        await worker.broker.delete(STAGING)
        return worker

    async def drop_stale(self) -> int:
        """Empty the staging list and kombu's unacknowledged messages before a batch; how many
        messages were there. Between batches there should be none, but kombu has restored
        messages of an earlier, finished batch into the staging list (the queue they were
        published to) between two batches (674 once, 2026-11-30; cause not found): they would
        be counted into the next batch, and their tasks no longer exist."""
        pipe = self.broker.pipeline(transaction=True)
        pipe.llen(STAGING)
        pipe.hlen(UNACKED[0])
        pipe.delete(STAGING, *UNACKED)
        staged, unacked, _ = await pipe.execute()
        return int(staged) + int(unacked)

    async def publish(self, tasks: Sequence[Task]) -> int:
        """Each task's message into the staging list (not yet seen by the worker), after
        `drop_stale`; how many stale messages it dropped."""
        stale = await self.drop_stale()
        await asyncio.to_thread(self._publish, list(tasks))
        waiting = await self.broker.llen(STAGING)  # type: ignore[misc]
        if waiting != len(tasks):
            raise RuntimeError(f"{waiting} of {len(tasks)} Celery messages in {STAGING}")
        return stale

    def _publish(self, tasks: list[Task]) -> None:
        from bench.celery_baseline.tasks import analyze_audio_task, app

        app.conf.update(broker_url=self.stack.redis_url(CELERY_BROKER_DB), result_backend=None)
        for task in tasks:
            analyze_audio_task.apply_async(
                args=[str(task.record_id), {}], task_id=str(task.task_id), queue=STAGING
            )

    async def release(self) -> float:
        now = time.time()
        await self.broker.rename(STAGING, QUEUE)
        return now

    def cpu_seconds(self) -> float:
        """The main process, its pool processes and the pool processes it has replaced."""
        return cpu_seconds(self.child.pid, tree=True)

    def rss(self) -> int:
        return rss_bytes(self.child.pid, tree=True)

    async def close(self) -> Any:
        await self.broker.aclose()
