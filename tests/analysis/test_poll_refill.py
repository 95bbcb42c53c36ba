"""A worker whose poll filled every free job slot polls again as soon as a share of its slots
is free (worker/healing.py `_next_poll`), not only after WORKER_POLL_DELAY_SECONDS: a backlog
is taken at the pace its jobs end. Before, each job slot stood idle from its job's end to the
next poll (on average half the poll delay), and a worker took a backlog at a fraction of its
concurrency."""

from __future__ import annotations

import asyncio

import httpx

from app.settings import Settings
from tests.analysis.conftest import StartWorker, new_task, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok
from worker.main import healing_worker

TASKS, MAX_JOBS = 6, 2
POLL_DELAY = 60.0  # seconds: far beyond the test, which ends within WITHIN
WITHIN = 20.0


async def test_a_backlog_is_taken_as_slots_free_not_at_the_poll_delay(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    fake_ai.reset(default=ok(latency=0.2))
    # Every task is queued before the worker starts: its first poll (at once) fills both
    # slots; the next poll waits the poll delay unless freed slots wake it.
    task_ids = [await new_task(client, alice) for _ in range(TASKS)]
    await start_worker(worker_max_jobs=MAX_JOBS, worker_poll_delay_seconds=POLL_DELAY)
    finals = await asyncio.gather(
        *(wait_for_status(client, alice, task_id, within=WITHIN) for task_id in task_ids)
    )
    assert [final["status"] for final in finals] == ["success"] * TASKS, finals
    assert fake_ai.call_count() == TASKS


def test_no_early_poll_during_a_graceful_stop(worker_settings: Settings) -> None:
    """arq's graceful stop (SIGTERM) stops picking jobs (`allow_pick_jobs`) while the running
    ones finish: an early poll would pick nothing and leave the backlog flag as it was, so the
    polls would follow each other at once, a busy loop for the rest of the grace."""
    worker = healing_worker(
        worker_settings.model_copy(update={"worker_max_jobs": MAX_JOBS}), handle_signals=False
    )
    worker._backlog = True  # the last poll filled every slot; none is taken now
    assert worker._refill_due()
    worker.allow_pick_jobs = False  # as arq's handle_sig_wait_for_completion does
    assert not worker._refill_due()
