"""C2: provider failover (issue 14). Two AI providers, two fake AI services over HTTP; the
second is configured as a degraded fallback. While the first answers 503, tasks complete on
the second within their first attempt (no retry spent), marked degraded with the reason, and
the first's circuit opens; once it recovers, tasks return to it. A 422 from the first (the
recording itself is bad) fails the task without a call to the second.

Processes: the API under uvicorn, one `python -m worker` (4 jobs), two fake AI services.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text

from app.ai_client.providers import Keys
from tests.conftest import ApiUser, MakeUser
from tests.fake_ai import FakeAI, ok, status
from tests.reliability.report import record_figure
from tests.reliability.system import System, ai_calls_per_task, poll

JOBS = 4
THRESHOLD = 3
COOLDOWN = 2.0
DESCRIPTION = (
    "two AI providers: the first answering 503 → tasks complete on the second (a degraded "
    "fallback, marked so), the first's circuit opens, tasks return to it after it recovers; "
    "a 422 from the first is not retried on the second"
)
RESULTS = text(
    "SELECT task_id, provider, provider_model, degraded, degraded_reason"
    " FROM ai_analysis_results"
    " WHERE task_id = ANY(CAST(:ids AS uuid[]))"
)


@pytest.fixture
async def second_ai() -> AsyncIterator[FakeAI]:
    server = FakeAI().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.scenario("C2")
async def test_c2_failover_to_the_second_provider_and_back(
    system: System, make_user: MakeUser, second_ai: FakeAI
) -> None:
    first = system.fake_ai
    assert first is not None
    first.reset(default=status(503))
    second_ai.reset(default=ok(latency=0.1))
    providers = [
        {"name": "first", "url": first.url, "model": "m2"},
        {"name": "second", "url": second_ai.url, "degraded": True},
    ]
    env = {
        "AI_PROVIDERS": json.dumps(providers),
        "WORKER_MAX_JOBS": str(JOBS),
        "BREAKER_FAILURE_THRESHOLD": str(THRESHOLD),
        "BREAKER_COOLDOWN_SECONDS": str(COOLDOWN),
    }
    user = await make_user()
    await system.start_api()
    worker = await system.start_worker("c2", **env)
    breaker = Keys.of("first")
    redis = system.redis

    # -- the first is down: the second serves, degraded; the first's circuit opens ----------
    outage = await _run(system, user, 20, worker)
    rows = await system.rows(outage)
    results = await _results(system, outage)
    assert {t: row.status for t, row in rows.items()} == dict.fromkeys(outage, "success")
    assert all(row.retry_count == 0 and row.retry_counts == {} for row in rows.values())
    assert {r["provider"] for r in results.values()} == {"second"}
    assert all(r["degraded"] for r in results.values())
    assert all(
        r["degraded_reason"].startswith("primary providers unavailable: first: ")
        for r in results.values()
    )

    shown = await system.http.get(
        f"/api/v1/tasks/analysis/{outage[0]}/result", headers=user.headers
    )
    assert shown.status_code == 200, shown.text
    said = shown.json()
    assert (said["provider"], said["provider_model"], said["degraded"]) == ("second", None, True)
    assert said["degraded_reason"] == results[outage[0]]["degraded_reason"]

    async def first_open() -> bool:
        return bool(await redis.exists(breaker.open))

    await poll(first_open, 10, "the first provider's circuit open", 0.02)
    calls_in_outage = first.call_count()
    # Without the breaker every task would have met the 503 first.
    assert calls_in_outage < len(outage), calls_in_outage

    # -- the first recovers: after its cool-down a probe closes the circuit ------------------
    first.switch(ok(latency=0.1))

    async def first_closed() -> bool:
        return not await redis.exists(breaker.open, breaker.failures, breaker.probe)

    async def cooled_down() -> bool:
        return not await redis.exists(breaker.open)

    await poll(cooled_down, 2 * COOLDOWN + 5, "the first provider's cool-down over", 0.02)
    probing = await _run(system, user, 8, worker)  # the probe goes out with these
    await poll(first_closed, 10, "the first provider's circuit closed", 0.05)
    recovered = await _run(system, user, 8, worker)
    results = await _results(system, recovered)
    assert {(r["provider"], r["provider_model"]) for r in results.values()} == {("first", "m2")}
    assert {call.query.get("model_version") for call in first.calls} == {"m2"}  # asked for
    assert not any(r["degraded"] or r["degraded_reason"] for r in results.values())
    probed = await _results(system, probing)

    # -- a 422 from the first: the recording is bad, no other provider is asked --------------
    first.then(status(422))
    second_calls = second_ai.call_count()
    (bad,) = await _run(system, user, 1, worker)
    row = (await system.rows([bad]))[bad]
    assert row.status == "failure" and row.error_code == "validation"
    assert ai_calls_per_task(first)[bad] == [1]
    assert bad not in ai_calls_per_task(second_ai)
    assert second_ai.call_count() == second_calls

    record_figure(
        "C2",
        f"first provider answering 503: {len(outage)}/{len(outage)} tasks served by the "
        f"second (degraded), 0 retries, the first called {calls_in_outage} times before its "
        f"circuit opened (threshold {THRESHOLD}, {JOBS} jobs); after recovery "
        f"{sum(r['provider'] == 'first' for r in probed.values())}/{len(probing)} tasks on "
        f"the first while its probe ran, then {len(recovered)}/{len(recovered)}; a 422 "
        "failed its task as validation with no call to the second",
        scale=f"breaker cool-down {COOLDOWN:g} s (production 30 s)",
        description=DESCRIPTION,
        first_calls_in_outage=calls_in_outage,
    )


async def _run(system: System, user: ApiUser, count: int, worker: Any) -> list[str]:
    """Submit `count` new recordings and wait until their tasks are terminal."""
    _, records = await system.create_records(user, count)
    task_ids = await system.submit(user, records)
    await system.wait_terminal(task_ids, within=60, watch=[worker])
    return task_ids


async def _results(system: System, task_ids: Sequence[str]) -> dict[str, Any]:
    async with system.engine.connect() as connection:
        rows = (await connection.execute(RESULTS, {"ids": list(task_ids)})).mappings().all()
    return {str(row["task_id"]): row for row in rows}
