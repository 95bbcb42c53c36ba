"""R3: Redis killed and started again, empty, with 500 tasks queued and 20 running: all 520
complete, no task analysed twice, the workers never exit; the time until the queue is rebuilt
(the reconciler, worker/cron.py, enqueues the jobs again from PostgreSQL: the rows are the
outbox).

Processes: the API under uvicorn and two workers (`python -m worker`, 10 jobs each) on the
session's PostgreSQL and a Redis of this test's own (EmbeddedRedis), SIGKILLed by PID and
started again on the same port; the fake AI service holds the first 20 calls 20 s.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedded import EmbeddedRedis
from app.settings import Settings
from tests.analysis.conftest import FAST
from tests.conftest import MakeUser
from tests.fake_ai import FakeAI, ok
from tests.reliability.report import record_figure
from tests.reliability.system import System, poll

QUEUED, RUNNING, WORKERS = 500, 20, 2
FAILED_POLLS = 4  # per worker before Redis is back: an outage of several backoff rounds
# The calls in flight outlast the submits of the other 500 and the outage (on a loaded
# machine: a shorter call let the workers take queued tasks before the kill).
RUNNING_CALL_SECONDS = 20.0
ENV = {
    "WORKER_MAX_JOBS": str(RUNNING // WORKERS),
    "AI_DEADLINE_SECONDS": "30",
    "JOB_TIMEOUT_SECONDS": "40",
}
SCALE = (
    f"reconciler every {FAST['reconcile_interval_seconds']} s, pending grace"
    f" {FAST['reconcile_pending_grace_seconds']} s (production 30 s and 5 s); AI 0.1 s a task"
)
ENQUEUED_AFTER = text(
    """
    SELECT count(*) AS n, extract(epoch FROM max(enqueued_at) - :since) AS last
    FROM ai_analysis_tasks WHERE task_id = ANY(CAST(:ids AS uuid[])) AND enqueued_at > :since
    """
)


@pytest.fixture
async def r3_system(
    settings: Settings,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    own_redis: EmbeddedRedis,
    clean: None,
    tmp_path: Path,
) -> AsyncIterator[System]:
    servers = settings.model_copy(update={"redis_url": own_redis.url})
    running = System(servers, engine, tmp_path, fake_ai)
    try:
        yield running
    finally:
        await running.close()


@pytest.mark.scenario("R3")
async def test_r3_redis_killed_and_restarted_empty_with_500_queued_and_20_running(
    r3_system: System, own_redis: EmbeddedRedis, engine: AsyncEngine, make_user: MakeUser
) -> None:
    system = r3_system
    fake_ai = system.fake_ai
    assert fake_ai is not None
    fake_ai.reset(default=ok(latency=0.1))
    fake_ai.then(ok(latency=RUNNING_CALL_SECONDS), times=RUNNING)
    user = await make_user()
    await system.start_api()
    _, records = await system.create_records(user, QUEUED + RUNNING)
    # Both workers run before the tasks come: the first 20 submitted fill their slots.
    workers = [await system.start_worker(f"r3-{n}", **ENV) for n in range(WORKERS)]
    task_ids = await system.submit(user, records)

    async def running() -> bool:
        counts = await system.status_counts(task_ids)
        return counts["processing"] == RUNNING and fake_ai.call_count() == RUNNING

    await poll(running, 60, f"{RUNNING} analyses in flight")
    rows = await system.rows(task_ids)
    in_flight = {t for t, row in rows.items() if row.status == "processing"}
    queued = [t for t in task_ids if t not in in_flight]
    assert len(queued) == QUEUED

    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGKILL)
    own_redis.process.wait()
    own_redis.process = None
    killed_at = time.monotonic()

    async def every_worker_retrying() -> bool:
        for worker in workers:
            assert worker.returncode is None, f"{worker.pid} exited:\n{worker.output()}"
        failed = "queue poll: redis does not answer"
        return all(w.output().count(failed) >= FAILED_POLLS for w in workers)

    await poll(every_worker_retrying, 30, f"{FAILED_POLLS} failed polls in every worker")
    own_redis.start()  # the same port, empty: the 500 queued jobs are gone
    restarted_at = time.monotonic()
    async with engine.connect() as connection:
        db_restart = await connection.scalar(text("SELECT now()"))

    completed_in = await system.wait_terminal(task_ids, within=120, watch=workers)

    counts = await system.status_counts(task_ids)
    assert counts == {"success": QUEUED + RUNNING}, counts
    results = await system.results_per_task()
    assert {t: results[t] for t in task_ids if results[t] != 1} == {}  # 0 duplicates, 0 lost
    calls = system.ai_calls_per_task()
    assert {t: calls.get(t) for t in task_ids if calls.get(t) != [1]} == {}  # one call each
    for worker in workers:
        assert worker.returncode is None, worker.output()
        assert "queue poll: redis answers again" in worker.output()
    async with engine.connect() as connection:
        since = {"ids": queued, "since": db_restart}
        enqueued = (await connection.execute(ENQUEUED_AFTER, since)).one()
    assert enqueued.n == QUEUED  # each queued job came back through the reconciler
    rebuilt_in = float(enqueued.last)

    for worker in workers:  # and they still stop cleanly
        worker.send(signal.SIGTERM)
    codes = [await worker.wait(within=30) for worker in workers]
    assert codes == [0] * WORKERS, [w.output() for w in workers]
    record_figure(
        "R3",
        f"{QUEUED + RUNNING}/{QUEUED + RUNNING} success, 0 duplicate results, one AI call per"
        f" task, 0 worker exits; Redis down {restarted_at - killed_at:.1f} s; the {QUEUED} lost"
        f" jobs all re-enqueued {rebuilt_in:.1f} s after Redis came back (the reconciler is an"
        f" arq cron job: its tick waits for a job slot, all {RUNNING} held by the calls in"
        f" flight); every task done {completed_in:.1f} s after",
        scale=SCALE,
        down_seconds=round(restarted_at - killed_at, 2),
        rebuilt_seconds=round(rebuilt_in, 2),
        completed_seconds=round(completed_in, 2),
    )
