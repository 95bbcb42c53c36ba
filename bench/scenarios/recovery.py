"""(g) Recovery: SIGKILL of a worker holding 100 tasks; every task claimed again within 1.5×
the lease, measured from the kill.

Per round: 100 pending tasks; a worker (WORKER_MAX_JOBS=100, LEASE_SECONDS=L) claims all of
them, their AI calls hanging; once the rows show all 100 processing by that worker and the
fake AI has them all in flight, a rescuing worker (same settings) is started and polling, the
AI is told to answer new calls at once, and the first worker gets SIGKILL. Recovery is the
time from the kill until every one of the 100 rows has been claimed again (attempt 2),
polled every 20 ms; then every task must end in success.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass

import asyncpg

from bench.context import Context
from bench.fixtures import enqueue, task_counts
from bench.harness import wait_for
from bench.report import Goal, Row, Section
from bench.scenarios.batches import seed

NAME = "recovery"
TITLE = "(g) Recovery after SIGKILL of a worker holding 100 tasks"
HANG_SECONDS = 3600.0
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Sizes:
    tasks: int
    lease: float
    rounds: int


FULL = Sizes(tasks=100, lease=10.0, rounds=3)
QUICK = Sizes(tasks=100, lease=3.0, rounds=1)


@dataclass
class Outcome:
    recovery: float  # seconds from the kill until every task it held was claimed again
    held: int  # tasks the killed worker held
    not_succeeded: int


async def one_round(ctx: Context, sizes: Sizes, round_: int) -> Outcome:
    from app import redis_client

    stack = ctx.stack
    n = sizes.tasks
    settings = {"WORKER_MAX_JOBS": str(n), "LEASE_SECONDS": f"{sizes.lease:g}"}
    tasks = await seed(ctx, n)
    await stack.ai.configure(HANG_SECONDS)
    await stack.ai.reset()
    doomed = await stack.start_worker(f"doomed-{round_}", **settings)
    rescuer = None
    connection = await asyncpg.connect(stack.pg_url)
    try:
        arq = redis_client.connect(stack.redis_url())
        try:
            await enqueue(arq, tasks, deferred=False)
        finally:
            await arq.aclose()

        async def held() -> list[str]:
            rows = await connection.fetch(
                "SELECT task_id FROM ai_analysis_tasks"
                " WHERE status = 'processing' AND worker_name = $1",
                f"doomed-{round_}",
            )
            return [str(row["task_id"]) for row in rows]

        async def all_held() -> bool:
            return len(await held()) == n and (await stack.ai.stats())["in_flight"] >= n

        with contextlib.suppress(TimeoutError):  # then it holds fewer: measured on those
            await wait_for(all_held, 60.0, f"the doomed worker holding {n} tasks", alive=doomed)
        rescuer = await stack.start_worker(f"rescuer-{round_}", **settings)
        doomed_tasks = await held()
        await stack.ai.configure(0.0)
        killed_at = time.monotonic()
        doomed.popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.popen.wait, 10)

        async def all_claimed_again() -> bool:
            again = await connection.fetchval(
                "SELECT count(*) FROM ai_analysis_tasks"
                " WHERE attempt >= 2 AND task_id = ANY($1::uuid[])",
                doomed_tasks,
            )
            return int(again) == len(doomed_tasks)

        deadline = killed_at + 5 * sizes.lease + 30
        recovery = float("nan")
        while doomed_tasks and time.monotonic() < deadline:
            if await all_claimed_again():
                recovery = time.monotonic() - killed_at
                break
            await asyncio.sleep(POLL_SECONDS)

        async def all_ended() -> bool:
            counts = await task_counts(stack.pg_url)
            return sum(counts.get(s, 0) for s in ("success", "failure", "cancelled")) == n

        try:
            await wait_for(all_ended, 60.0, "every task ended", 0.1, alive=rescuer)
        except TimeoutError:
            pass
        left = n - (await task_counts(stack.pg_url)).get("success", 0)
    finally:
        await connection.close()
        ctx.processes.stop(doomed)
        if rescuer is not None:
            ctx.processes.stop(rescuer)
    return Outcome(recovery, len(doomed_tasks), left)


async def run(ctx: Context) -> Section:
    sizes = QUICK if ctx.quick else FULL
    rounds = ctx.rounds(sizes.rounds)
    outcomes: list[Outcome] = []
    for round_ in range(1, rounds + 1):
        ctx.log(f"{NAME}: round {round_}/{rounds}")
        outcomes.append(await one_round(ctx, sizes, round_))
    recoveries = [o.recovery for o in outcomes]
    left = [float(o.not_succeeded) for o in outcomes]
    scenario = f"{sizes.tasks} tasks, lease {sizes.lease:g} s"
    rows = [
        Row(
            scenario,
            "kill → all claimed again",
            recoveries,
            [sizes.lease] * len(recoveries),
            "the lease",
            "s",
            Goal("ratio", "<=", 1.5),
        ),
        Row(scenario, "tasks the killed worker held", [float(o.held) for o in outcomes]),
        Row(
            scenario,
            "tasks not ending in success",
            left,
            unit="",
            goal=Goal("value", "<=", 0, "0"),
        ),
    ]
    notes = [
        "The rescuer polls before the kill, so only the lease (taken for a lease and a quarter, "
        "renewed every quarter until the kill) stands between the kill and the take-over, plus "
        "arq's poll.",
    ]
    return Section(NAME, TITLE, rows, notes)
