"""C1: the global AI concurrency cap (issue 14). Three worker processes of 50 jobs each share
AI_MAX_CONCURRENCY=4 through Redis: the fake AI service, which counts the calls it answers at
once, never sees more than 4 (and sees 4: the cap is used, not just respected); what waits
for a slot waits in the queue, in its fair order, not claimed by a worker (a worker picks an
attempt only when a slot is free: AI_PICK_WITHIN_CAP), and spends no retry. One worker holding
slots is SIGKILLed: its slots come back within one lease (their leases, as Redis holds them,
end at most one lease after the kill; the first try of a waiting job then reaps them).

Processes: the API under uvicorn, three `python -m worker`, the fake AI over HTTP answering
each call in 0.3 s but the first four (one per slot) in 5 s: whichever worker holds one of
those when they all run is still holding it when it is killed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable
from typing import cast

import pytest
from sqlalchemy import text

from app.ai_client.providers import DEFAULT_PROVIDER, slots_key
from tests.analysis.conftest import FAST
from tests.conftest import MakeUser
from tests.fake_ai import ok
from tests.reliability.report import record_figure
from tests.reliability.system import System, poll

TASKS = 150
WORKERS = 3
JOBS = 50
CAP = 4
LATENCY = 0.3
HELD = 5.0  # the first CAP calls' latency
LEASE = FAST["lease_seconds"]  # 3 s (30 s in production)
ENV = {
    "WORKER_MAX_JOBS": str(JOBS),
    "AI_MAX_CONCURRENCY": str(CAP),
    "AI_SLOT_POLL_SECONDS": "0.2",
    "AI_DEADLINE_SECONDS": "10",  # above HELD
    "JOB_TIMEOUT_SECONDS": "30",
}
KEY = slots_key(DEFAULT_PROVIDER)
DESCRIPTION = (
    "3 workers × 50 jobs, AI_MAX_CONCURRENCY=4, 150 tasks: the AI service never sees more than "
    "4 concurrent calls; a worker holding slots SIGKILLed → its slots return within one lease"
)
PROCESSING = text(
    "SELECT count(*) FROM ai_analysis_tasks WHERE task_id = ANY(CAST(:ids AS uuid[]))"
    " AND status = 'processing'"
)


@pytest.mark.scenario("C1")
async def test_c1_three_workers_share_a_cap_of_four_and_a_killed_worker_gives_its_slots_back(
    system: System, make_user: MakeUser
) -> None:
    fake_ai = system.fake_ai
    assert fake_ai is not None
    fake_ai.reset(default=ok(latency=LATENCY))
    fake_ai.then(ok(latency=HELD), times=CAP)
    user = await make_user()
    await system.start_api()
    _, records = await system.create_records(user, TASKS)
    task_ids = await system.submit(user, records)
    workers = await system.start_workers("c1", WORKERS, **ENV)
    redis = system.redis

    async def holders() -> list[tuple[bytes, float]]:
        return cast(
            list[tuple[bytes, float]],
            await cast(Awaitable[object], redis.zrange(KEY, 0, -1, withscores=True)),
        )

    victim_name = ""

    async def the_long_calls_hold_every_slot() -> bool:
        nonlocal victim_name
        held = await holders()
        if held:
            victim_name = held[0][0].decode().split("/", 1)[0]
        return len(held) == CAP and fake_ai.in_flight == CAP

    await poll(the_long_calls_hold_every_slot, 30, f"the first {CAP} calls running", 0.02)
    # The cap is full: the other tasks wait in the queue. Workers that saw the same free
    # slots at the same poll may each have picked them (at most a cap's worth each).
    async with system.engine.connect() as connection:
        claimed = int(await connection.scalar(PROCESSING, {"ids": task_ids}) or 0)
    assert CAP <= claimed <= WORKERS * CAP, claimed
    victim = next(
        w for w, n in zip(workers, range(WORKERS), strict=True) if f"c1-{n}" == victim_name
    )
    victim.send(signal.SIGKILL)
    killed_at = time.monotonic()
    assert await victim.wait(within=10) == -signal.SIGKILL
    seconds, micros = await cast(Awaitable[tuple[int, int]], redis.time())
    redis_now_ms = seconds * 1000 + micros // 1000
    victims = {
        member: score
        for member, score in await holders()
        if member.decode().startswith(victim_name + "/")
    }
    # Killed while holding: what Redis says of those leases, right after the kill.
    assert victims, "the killed worker held no slot at its death"
    lease_left = (max(victims.values()) - redis_now_ms) / 1000

    async def victim_slots_gone() -> bool:
        return not any(member in victims for member, _ in await holders())

    await poll(victim_slots_gone, 4 * LEASE, "the killed worker's slots back", 0.02)
    returned = time.monotonic() - killed_at

    async def cap_used_again() -> bool:
        return len(await holders()) == CAP

    await poll(cap_used_again, 10, f"{CAP} slots held by the survivors", 0.02)
    survivors = [w for w in workers if w is not victim]
    took = await system.wait_terminal(task_ids, within=120, watch=survivors)

    rows = await system.rows(task_ids)
    results = await system.results_per_task()
    statuses = {t: row.status for t, row in rows.items()}
    record_figure(
        "C1",
        f"{sum(s == 'success' for s in statuses.values())}/{TASKS} success in {took:.1f} s; "
        f"the AI service saw at most {fake_ai.max_in_flight} concurrent calls (cap {CAP}, "
        f"{WORKERS} workers × {JOBS} jobs; {claimed} tasks claimed while the cap was full, "
        f"the others waiting in the queue); {len(victims)} slot(s) of the SIGKILLed worker "
        f"had {lease_left:.2f} s of lease left and were back {returned:.2f} s after the kill "
        f"(lease {LEASE:g} s)",
        scale=f"lease {LEASE:g} s (production 30 s); AI call {LATENCY:g} s",
        description=DESCRIPTION,
        max_in_flight=fake_ai.max_in_flight,
        claimed_while_full=claimed,
        slot_lease_left_seconds=round(lease_left, 2),
        slots_back_seconds=round(returned, 2),
        seconds=round(took, 1),
    )

    assert fake_ai.max_in_flight == CAP  # never more, and the cap is used
    assert statuses == dict.fromkeys(task_ids, "success")
    assert results == dict.fromkeys(task_ids, 1)
    assert all(row.retry_count == 0 and row.retry_counts == {} for row in rows.values())
    # Redis held the killed worker's slots for at most one lease past its death...
    assert lease_left <= LEASE, lease_left
    # ...and a waiting job took them back then (its next look: 0.2 s at most, on a loaded
    # machine a little more).
    assert returned <= LEASE + 1.5, returned
