"""R7: a poison recording kills the analyzer's pool process every time it is analysed (the
analyzer's test hook ANALYZER_TEST_CRASH_MARKER, what an OOM kill or a crash in a native
decoder does): the other tasks succeed without spending a retry (an analysis in the pool at a
crash runs its stage again alone), the analyzer heals each time (same process, its pool
replaced), and the poison task ends as failure after its retry budget with a readable
message. A healthy task once failed here: analysed beside the poison at each of its six
crashes, it spent its own network budget.

Processes: the reference analyzer (uvicorn, 2 pool processes), the API under uvicorn and one
worker (`python -m worker`) on the session's PostgreSQL and Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ai_client.errors import ErrorClass
from app.settings import Settings
from tests.analyzer.conftest import FIXTURES
from tests.conftest import MakeUser
from tests.reliability.analyzer_process import Analyzer, running_analyzer
from tests.reliability.report import record_figure
from tests.reliability.system import System, system_on
from worker.retry import RETRY_BUDGETS

POISON = "POISON-RECORDING"
HEALTHY = 20
SPEECH = FIXTURES / "speech_fast.wav"  # 4.3 s of speech: analysed in about a second
ENV = {
    "WORKER_MAX_JOBS": "4",
    "AI_SERVICE_CONCURRENCY": "2",
    "AI_DEADLINE_SECONDS": "30",
    "JOB_TIMEOUT_SECONDS": "60",
}
BUDGET = RETRY_BUDGETS[ErrorClass.NETWORK]  # a 503 is retried as a network error
SCALE = "retry delays 0.2 s doubling to 2 s (production 5 s to 600 s)"


@pytest.fixture
def analyzer(tmp_path: Path) -> Iterator[Analyzer]:
    directory = tmp_path / "analyzer"
    directory.mkdir()
    with running_analyzer(directory, ANALYZER_TEST_CRASH_MARKER=POISON) as server:
        yield server


@pytest.fixture
async def r7_system(
    settings: Settings, engine: AsyncEngine, analyzer: Analyzer, clean: None, tmp_path: Path
) -> AsyncIterator[System]:
    async with system_on(settings, engine, analyzer.url, tmp_path) as running:
        yield running


@pytest.mark.scenario("R7")
async def test_r7_a_poison_recording_kills_the_pool_process_every_time(
    r7_system: System, analyzer: Analyzer, settings: Settings, make_user: MakeUser
) -> None:
    system = r7_system
    analyzer_pid = analyzer.process.pid
    (system.directory / "recording.wav").write_bytes(SPEECH.read_bytes())  # every record's
    user = await make_user()
    await system.start_api()
    _, records = await system.create_records(user, HEALTHY + 1)
    poison_record = records[HEALTHY // 2]
    poisoned = Path(settings.storage_dir) / f"scenario/{poison_record}.wav"
    poisoned.unlink()  # a hard link to the shared file: replaced, not written through
    poisoned.write_bytes(SPEECH.read_bytes() + POISON.encode())
    worker = await system.start_worker("r7", **ENV)
    task_ids = await system.submit(user, records)
    poison_task = task_ids[HEALTHY // 2]

    took = await system.wait_terminal(task_ids, within=150, watch=[worker])

    rows = await system.rows(task_ids)
    poison = rows.pop(poison_task)
    failed = {t: (row.status, row.retry_counts, row.error_message) for t, row in rows.items()}
    assert {t: said for t, said in failed.items() if said[0] != "success"} == {}
    assert poison.status == "failure"
    # Its budget spent, not one more (attempts also count the deferrals of a busy analyzer:
    # it admits only as many analyses as it has pool processes).
    assert poison.retry_count == BUDGET and dict(poison.retry_counts).get("network") == BUDGET
    async with system.engine.connect() as connection:
        message = await connection.scalar(
            text("SELECT error_message FROM ai_analysis_tasks WHERE task_id = :t"),
            {"t": poison_task},
        )
    assert "an analysis process died during this analysis" in message, message
    results = await system.results_per_task()
    assert {t: results[t] for t in rows if results[t] != 1} == {}
    assert results[poison_task] == 0
    # In the pool at a crash, a healthy analysis ran its stage again alone: no retry spent
    # (a busy analyzer's deferral, `ai_busy`, spends none either).
    spent = {t: dict(row.retry_counts) for t, row in rows.items()}
    assert {t: c for t, c in spent.items() if set(c) - {"ai_busy"}} == {}

    # The analyzer healed each time: the same process, its pool replaced once per crash (the
    # poison's alone, and the one beside a healthy stage before the poison's run alone).
    assert analyzer.process.poll() is None and analyzer.process.pid == analyzer_pid
    health = analyzer.get("/healthz").json()
    pool, rerun = health["pool"], health["analyses"]["rerun_alone"]
    assert BUDGET + 1 <= pool["rebuilds"] <= BUDGET + 1 + rerun, health
    assert analyzer.get("/readyz").status_code in (200, 503)  # answers; ready once warmed
    assert worker.returncode is None, worker.output()
    record_figure(
        "R7",
        f"{HEALTHY}/{HEALTHY} healthy tasks success, none retried ({rerun} stages in the"
        f" pool at a crash ran again alone); the poison task failed after"
        f" {poison.retry_count + 1} analyses"
        f" ({BUDGET} retries) with '{message[:90]}'; the analyzer rebuilt its pool"
        f" {pool['rebuilds']} times in the same process; {took:.1f} s in all",
        scale=SCALE,
        rebuilds=pool["rebuilds"],
        poison_attempts=poison.retry_count + 1,
        rerun_alone=rerun,
        seconds=round(took, 2),
    )
