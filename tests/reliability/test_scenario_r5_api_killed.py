"""R5: the API process dies between a submit's commit and its enqueue (the
FAULT_EXIT_AFTER_COMMIT hook: `os._exit` right after the commit): the tasks are in
PostgreSQL and not in Redis; the client, which got no answer, retries with its
Idempotency-Key and gets the same tasks; the reconciler enqueues them and they complete.

Processes: the API under uvicorn (killed twice by the hook: a session's submit, then a
record's), then the API without the hook and one worker process.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from app.analysis import queue
from app.fault_hooks import FAULT_EXIT_CODE
from app.settings import Settings
from tests.analysis.conftest import FAST
from tests.conftest import ApiUser, MakeUser
from tests.reliability.report import record_figure
from tests.reliability.system import System

SESSION_RECORDS = 20
SCALE = (
    f"reconciler every {FAST['reconcile_interval_seconds']} s, pending grace "
    f"{FAST['reconcile_pending_grace_seconds']:g} s (production 30 s and 5 s)"
)
SUBMIT = "/api/v1/tasks/analysis/submit"


async def _submit_into_the_fault(
    system: System, user: ApiUser, body: dict[str, str], key: str
) -> None:
    """The API (started with the hook) dies under this submit: the client gets no answer."""
    api = await system.start_api(FAULT_EXIT_AFTER_COMMIT="true")
    with pytest.raises(httpx.TransportError):
        await system.http.post(SUBMIT, json=body, headers=user.headers | {"Idempotency-Key": key})
    assert await api.wait(within=10) == FAULT_EXIT_CODE, api.output()


@pytest.mark.scenario("R5")
async def test_r5_api_killed_between_commit_and_enqueue(
    system: System, make_user: MakeUser
) -> None:
    user = await make_user()
    session_id, _ = await system.create_records(user, SESSION_RECORDS)
    _, [record_id] = await system.create_records(user, 1)
    session_body = {"practice_session_id": session_id}
    record_body = {"practice_record_id": record_id}
    await _submit_into_the_fault(system, user, session_body, "r5-session")
    await _submit_into_the_fault(system, user, record_body, "r5-record")

    # Committed, not enqueued: the rows are the outbox.
    async with system.engine.connect() as connection:
        pending = await connection.execute(
            text("SELECT task_id FROM ai_analysis_tasks WHERE status = 'pending'")
        )
        orphans = [str(task_id) for task_id in pending.scalars()]
    assert len(orphans) == SESSION_RECORDS + 1
    assert await system.redis.zcard(queue.QUEUE_NAME) == 0

    # The client retries with its keys: the same tasks, none created twice.
    await system.start_api()
    answers = [
        await system.http.post(SUBMIT, json=body, headers=user.headers | {"Idempotency-Key": key})
        for body, key in ((session_body, "r5-session"), (record_body, "r5-record"))
    ]
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    answered = {str(t["task_id"]) for t in answers[0].json()["tasks"]}
    answered.add(str(answers[1].json()["task_id"]))
    assert answered == set(orphans)

    started = time.monotonic()
    worker = await system.start_worker("reconciling-worker")
    took = await system.wait_terminal(orphans, within=60, watch=[worker])
    done = time.monotonic() - started

    rows = await system.rows(orphans)
    results = await system.results_per_task()
    calls = system.ai_calls_per_task()
    enqueued_by_reconciler = sum(
        int(n) for n in re.findall(r"reconcile: enqueued (\d+)", worker.output())
    )
    successes = sum(row.status == "success" for row in rows.values())
    record_figure(
        "R5",
        f"{len(orphans)} tasks orphaned by 2 API deaths between commit and enqueue (a "
        f"session's {SESSION_RECORDS}, a record's 1), none in Redis; the client's retries "
        f"with its Idempotency-Key answered the same tasks; the reconciler enqueued "
        f"{enqueued_by_reconciler}; {successes}/{len(orphans)} success {done:.1f} s after "
        f"a worker started, 0 duplicates",
        scale=SCALE,
        orphaned=len(orphans),
        reconciler_enqueued=enqueued_by_reconciler,
        done_seconds=round(done, 2),
    )
    assert took <= done
    assert {row.status for row in rows.values()} == {"success"}
    assert results == dict.fromkeys(orphans, 1)
    assert calls == {t: [1] for t in orphans}
    # Only the reconciler could have enqueued them: nothing else did after the commit.
    assert enqueued_by_reconciler == len(orphans), worker.output()


def test_the_fault_hook_is_refused_outside_tests() -> None:
    with pytest.raises(ValidationError, match="only with ENVIRONMENT=test"):
        Settings(_env_file=None, environment="development", fault_exit_after_commit=True)  # type: ignore[call-arg]
    assert Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        fault_exit_after_commit=True,
    ).fault_exit_after_commit
